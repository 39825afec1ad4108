package faultproxy

import (
	"context"
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// upstreamBody is what the upstream answers a GET with; long enough to cut in half.
var upstreamBody = strings.Repeat("fleetd", 500)

type seen struct {
	Method, Path, Query, Host, Body string
	Header                          http.Header
}

// upstream records every request it receives and answers like S3 would in
// shape: PUT 200 with an ETag and no body, GET 200 with a body.
type upstream struct {
	mu   sync.Mutex
	reqs []seen
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.reqs = append(u.reqs, seen{
		Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery,
		Host: r.Host, Body: string(body), Header: r.Header.Clone(),
	})
	u.mu.Unlock()
	w.Header().Set("ETag", `"etag-1"`)
	if r.Method == http.MethodPut {
		return
	}
	_, _ = io.WriteString(w, upstreamBody)
}

func (u *upstream) seen() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.reqs...)
}

func setup(t *testing.T) (*Proxy, *upstream) {
	t.Helper()
	up := &upstream{}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	p, err := Start(srv.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close) // runs before srv.Close
	return p, up
}

// newClient returns a client that adds nothing to requests. Without
// keep-alives each request has a fresh connection, so Go's transport never
// retries a GET whose reused connection was reset.
func newClient(t *testing.T, keepAlive bool) *http.Client {
	tr := &http.Transport{DisableCompression: true, DisableKeepAlives: !keepAlive}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

type result struct {
	status int
	header http.Header
	body   string
	doErr  error // from Do
	err    error // from Do or from reading the body
}

func do(c *http.Client, method, url, body string, header map[string]string) result {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return result{doErr: err, err: err}
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return result{doErr: err, err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: string(b), err: err}
}

func s3Code(t *testing.T, body string) string {
	t.Helper()
	var e s3Error
	if err := xml.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	if e.Message != "injected by faultproxy" || e.RequestID == "" {
		t.Errorf("error body %q: want the faultproxy message and a request id", body)
	}
	return e.Code
}

func timeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestKeyOf(t *testing.T) {
	tests := []struct{ path, want string }{
		{"/bkt/a", "a"},
		{"/bkt/pending/a/b", "pending/a/b"},
		{"/bkt/", ""},
		{"/bkt", ""},
		{"/", ""},
		{"/bkt//lead", "/lead"},
	}
	for _, tt := range tests {
		if got := keyOf(tt.path); got != tt.want {
			t.Errorf("keyOf(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}

func TestPassForwardsUnchanged(t *testing.T) {
	p, up := setup(t)
	h := p.Add(Rule{Method: "PUT"}) // Pass: counts only
	req, _ := http.NewRequest("PUT", p.URL()+"/bkt/dir/a%20b?x-id=PutObject", strings.NewReader("payload"))
	req.Host = "s3.test:9000"
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=x, SignedHeaders=host;x-amz-date, Signature=y")
	req.Header.Set("X-Amz-Date", "20250101T000000Z")
	req.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
	req.Header.Set("If-None-Match", "*")
	resp, err := newClient(t, true).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("ETag") != `"etag-1"` {
		t.Errorf("client got %d, ETag %q; want 200 and the upstream ETag", resp.StatusCode, resp.Header.Get("ETag"))
	}

	got := up.seen()
	if len(got) != 1 {
		t.Fatalf("upstream saw %d requests, want 1", len(got))
	}
	s := got[0]
	if s.Method != "PUT" || s.Path != "/bkt/dir/a%20b" || s.Query != "x-id=PutObject" || s.Host != "s3.test:9000" || s.Body != "payload" {
		t.Errorf("upstream saw %+v", s)
	}
	for _, k := range []string{"Authorization", "X-Amz-Date", "X-Amz-Content-Sha256", "If-None-Match"} {
		if s.Header.Get(k) != req.Header.Get(k) {
			t.Errorf("upstream %s = %q, want %q", k, s.Header.Get(k), req.Header.Get(k))
		}
	}
	for _, k := range []string{"X-Forwarded-For", "Accept-Encoding"} {
		if v, ok := s.Header[k]; ok {
			t.Errorf("upstream got added header %s: %q", k, v)
		}
	}
	if h.Fired() != 1 || p.Requests() != 1 {
		t.Errorf("Fired %d, Requests %d; want 1, 1", h.Fired(), p.Requests())
	}

	r := do(newClient(t, true), "GET", p.URL()+"/bkt/k", "", nil)
	if r.err != nil || r.status != 200 || r.body != upstreamBody {
		t.Errorf("GET: %d, %d bytes, %v; want 200 and the upstream body", r.status, len(r.body), r.err)
	}
}

func TestErrorBefore(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		status   int
		code     string
		want     int
		wantCode string
	}{
		{"default", "PUT", 0, "", 503, "SlowDown"},
		{"500", "PUT", 500, "", 500, "InternalError"},
		{"code", "DELETE", 409, "OperationAborted", 409, "OperationAborted"},
		{"head", "HEAD", 500, "", 500, ""},
		{"fake success", "PUT", 200, "", 200, ""}, // no body: a 2xx <Error> reads as 500
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, up := setup(t)
			h := p.Add(Rule{Action: ErrorBefore, Status: tt.status, Code: tt.code})
			r := do(newClient(t, true), tt.method, p.URL()+"/bkt/k", "x", nil)
			if r.err != nil || r.status != tt.want {
				t.Fatalf("got %d, %v; want %d", r.status, r.err, tt.want)
			}
			if tt.wantCode == "" {
				if r.body != "" {
					t.Errorf("HEAD got body %q", r.body)
				}
			} else {
				if ct := r.header.Get("Content-Type"); ct != "application/xml" {
					t.Errorf("Content-Type %q", ct)
				}
				if c := s3Code(t, r.body); c != tt.wantCode {
					t.Errorf("code %q, want %q", c, tt.wantCode)
				}
			}
			if n := len(up.seen()); n != 0 {
				t.Errorf("upstream saw %d requests, want 0", n)
			}
			if h.Fired() != 1 {
				t.Errorf("Fired %d, want 1", h.Fired())
			}
		})
	}
}

func TestErrorAfter(t *testing.T) {
	p, up := setup(t)
	p.Add(Rule{Method: "PUT", Action: ErrorAfter})
	r := do(newClient(t, true), "PUT", p.URL()+"/bkt/k", "landed", nil)
	if r.err != nil || r.status != 503 || s3Code(t, r.body) != "SlowDown" {
		t.Fatalf("got %d %q, %v; want 503 SlowDown", r.status, r.body, r.err)
	}
	if got := up.seen(); len(got) != 1 || got[0].Body != "landed" {
		t.Errorf("upstream saw %+v, want the PUT", got)
	}
}

func TestResets(t *testing.T) {
	tests := []struct {
		action   Action
		method   string
		upstream int
	}{
		{ResetBefore, "GET", 0},
		{ResetBefore, "PUT", 0},
		{ResetAfter, "GET", 1},
		{ResetAfter, "PUT", 1},
		{ResetMidResponse, "GET", 1},
		{ResetMidResponse, "PUT", 1}, // empty body: the headers are cut
		{ResetMidResponse, "HEAD", 1},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(int(tt.action))+"/"+tt.method, func(t *testing.T) {
			p, up := setup(t)
			h := p.Add(Rule{Action: tt.action})
			r := do(newClient(t, false), tt.method, p.URL()+"/bkt/k", "x", nil)
			if r.err == nil {
				t.Errorf("action %d: client got %d, want an error", tt.action, r.status)
			}
			if tt.action == ResetMidResponse && tt.method == "GET" && r.doErr == nil && len(r.body) >= len(upstreamBody) {
				t.Errorf("got the whole body (%d bytes) before the reset", len(r.body))
			}
			if n := len(up.seen()); n != tt.upstream {
				t.Errorf("upstream saw %d requests, want %d", n, tt.upstream)
			}
			if h.Fired() != 1 {
				t.Errorf("Fired %d, want 1", h.Fired())
			}
		})
	}
}

// After a reset the client sees one failed request; its next ones work.
func TestResetKeepsClientUsable(t *testing.T) {
	p, up := setup(t)
	c := newClient(t, true)
	p.Add(Rule{Method: "PUT", Action: ResetBefore, Times: 1})
	if r := do(c, "GET", p.URL()+"/bkt/a", "", nil); r.err != nil {
		t.Fatal(r.err)
	}
	// PUT is not replayable, so Go's transport does not retry it on a new
	// connection: the error reaches the caller.
	if r := do(c, "PUT", p.URL()+"/bkt/a", "x", nil); r.err == nil {
		t.Fatalf("PUT got %d, want an error", r.status)
	}
	if r := do(c, "GET", p.URL()+"/bkt/a", "", nil); r.err != nil || r.status != 200 {
		t.Fatalf("GET after reset: %d, %v", r.status, r.err)
	}
	if n := len(up.seen()); n != 2 {
		t.Errorf("upstream saw %d requests, want 2", n)
	}
}

func TestDelay(t *testing.T) {
	p, up := setup(t)
	p.Add(Rule{Action: Delay, Delay: 100 * time.Millisecond})
	start := time.Now()
	r := do(newClient(t, true), "GET", p.URL()+"/bkt/k", "", nil)
	if r.err != nil || r.status != 200 {
		t.Fatalf("got %d, %v", r.status, r.err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("answered after %v, want at least 100ms", d)
	}
	if n := len(up.seen()); n != 1 {
		t.Errorf("upstream saw %d requests, want 1", n)
	}
}

func TestDelayEndsOnClose(t *testing.T) {
	p, up := setup(t)
	h := p.Add(Rule{Action: Delay, Delay: time.Hour})
	done := make(chan result)
	go func() { done <- do(newClient(t, false), "GET", p.URL()+"/bkt/k", "", nil) }()
	if err := h.Wait(timeout(t), 1); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if r := <-done; r.err == nil {
		t.Errorf("got %d, want an error", r.status)
	}
	if n := len(up.seen()); n != 0 {
		t.Errorf("upstream saw %d requests, want 0", n)
	}
}

func TestHold(t *testing.T) {
	p, up := setup(t)
	c := newClient(t, true)
	h := p.Add(Rule{Method: "PUT", Key: regexp.MustCompile(`^held$`), Action: Hold})
	done := make(chan result)
	go func() { done <- do(c, "PUT", p.URL()+"/bkt/held", "x", nil) }()
	if err := h.Wait(timeout(t), 1); err != nil {
		t.Fatal(err)
	}
	// Other requests are not held.
	if r := do(c, "PUT", p.URL()+"/bkt/other", "y", nil); r.err != nil || r.status != 200 {
		t.Fatalf("other PUT: %d, %v", r.status, r.err)
	}
	if got := up.seen(); len(got) != 1 || got[0].Path != "/bkt/other" {
		t.Fatalf("upstream saw %+v while held, want only the other PUT", got)
	}
	h.Release()
	if r := <-done; r.err != nil || r.status != 200 {
		t.Fatalf("held PUT: %d, %v", r.status, r.err)
	}
	// Released: later matches go straight through, and still count.
	if r := do(c, "PUT", p.URL()+"/bkt/held", "z", nil); r.err != nil || r.status != 200 {
		t.Fatalf("PUT after release: %d, %v", r.status, r.err)
	}
	if h.Fired() != 2 || len(up.seen()) != 3 {
		t.Errorf("Fired %d, upstream saw %d; want 2, 3", h.Fired(), len(up.seen()))
	}
}

func TestHoldOutlivesItsClient(t *testing.T) {
	p, up := setup(t)
	h := p.Add(Rule{Method: "PUT", Action: Hold, Outlive: true, Times: 1})
	c := newClient(t, false)
	c.Timeout = 200 * time.Millisecond
	// The client gives up on the held request...
	if r := do(c, "PUT", p.URL()+"/bkt/late", "abandoned", nil); r.err == nil {
		t.Fatalf("held PUT answered %d, want the client to time out", r.status)
	}
	if n := len(up.seen()); n != 0 {
		t.Fatalf("upstream saw %d requests while held, want 0", n)
	}
	// ...and the request lands anyway, body and all, once released.
	h.Release()
	statuses, err := h.Forwarded(timeout(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := up.seen(); len(statuses) != 1 || statuses[0] != 200 || len(got) != 1 || got[0].Body != "abandoned" {
		t.Errorf("forwarded %v, upstream saw %+v; want one 200 with the body", statuses, got)
	}
}

func TestHoldOutliveAnswersAClientStillThere(t *testing.T) {
	p, _ := setup(t)
	h := p.Add(Rule{Action: Hold, Outlive: true})
	done := make(chan result)
	go func() { done <- do(newClient(t, false), "PUT", p.URL()+"/bkt/k", "x", nil) }()
	if err := h.Wait(timeout(t), 1); err != nil {
		t.Fatal(err)
	}
	h.Release()
	if r := <-done; r.err != nil || r.status != 200 {
		t.Errorf("held PUT: %d, %v; want 200", r.status, r.err)
	}
}

func TestRemoveReleasesHeld(t *testing.T) {
	p, up := setup(t)
	h := p.Add(Rule{Action: Hold})
	done := make(chan result)
	go func() { done <- do(newClient(t, true), "PUT", p.URL()+"/bkt/k", "x", nil) }()
	if err := h.Wait(timeout(t), 1); err != nil {
		t.Fatal(err)
	}
	h.Remove()
	if r := <-done; r.err != nil || r.status != 200 {
		t.Fatalf("held PUT: %d, %v", r.status, r.err)
	}
	if err := h.Wait(timeout(t), 2); !errors.Is(err, ErrRemoved) {
		t.Errorf("Wait after Remove: %v, want ErrRemoved", err)
	}
	if r := do(newClient(t, true), "PUT", p.URL()+"/bkt/k", "x", nil); r.err != nil || h.Fired() != 1 {
		t.Errorf("removed rule: %v, Fired %d; want it not to fire", r.err, h.Fired())
	}
	if n := len(up.seen()); n != 2 {
		t.Errorf("upstream saw %d requests, want 2", n)
	}
}

func TestCloseReleasesHeld(t *testing.T) {
	p, up := setup(t)
	h := p.Add(Rule{Action: Hold})
	const n = 3
	done := make(chan result, n)
	for range n {
		go func() { done <- do(newClient(t, false), "PUT", p.URL()+"/bkt/k", "x", nil) }()
	}
	if err := h.Wait(timeout(t), n); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		p.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second): // a guard against a hang, not a sync
		t.Fatal("Close hung on held requests")
	}
	p.Close() // idempotent
	for range n {
		if r := <-done; r.err == nil {
			t.Errorf("held request got %d after Close, want an error", r.status)
		}
	}
	if err := h.Wait(timeout(t), n+1); !errors.Is(err, ErrRemoved) {
		t.Errorf("Wait after Close: %v, want ErrRemoved", err)
	}
	if got := len(up.seen()); got != 0 {
		t.Errorf("upstream saw %d requests, want 0", got)
	}
}

func TestTimesAndSkip(t *testing.T) {
	p, _ := setup(t)
	c := newClient(t, true)
	h := p.Add(Rule{Method: "PUT", Action: ErrorBefore, Skip: 1, Times: 2})
	var got []int
	for range 5 {
		r := do(c, "PUT", p.URL()+"/bkt/k", "x", nil)
		if r.err != nil {
			t.Fatal(r.err)
		}
		got = append(got, r.status)
	}
	want := []int{200, 503, 503, 200, 200}
	if !slices.Equal(got, want) || h.Fired() != 2 {
		t.Errorf("statuses %v, Fired %d; want %v, 2", got, h.Fired(), want)
	}
}

// A rule that matches but does not fire lets the next rule decide.
func TestFallThrough(t *testing.T) {
	p, _ := setup(t)
	c := newClient(t, true)
	first := p.Add(Rule{Action: ErrorBefore, Status: 500, Times: 1})
	never := p.Add(Rule{Action: ErrorBefore, Status: 502, Prob: -1})
	second := p.Add(Rule{Action: ErrorBefore, Status: 409})
	var got []int
	for range 3 {
		got = append(got, do(c, "GET", p.URL()+"/bkt/k", "", nil).status)
	}
	want := []int{500, 409, 409}
	if !slices.Equal(got, want) || first.Fired() != 1 || never.Fired() != 0 || second.Fired() != 2 {
		t.Errorf("statuses %v, fired %d/%d/%d; want %v, 1/0/2", got, first.Fired(), never.Fired(), second.Fired(), want)
	}
}

func TestProb(t *testing.T) {
	fired := func() int {
		p, _ := setup(t)
		c := newClient(t, true)
		h := p.Add(Rule{Prob: 0.3})
		for range 1000 {
			if r := do(c, "HEAD", p.URL()+"/bkt/k", "", nil); r.err != nil {
				t.Fatal(r.err)
			}
		}
		if p.Requests() != 1000 {
			t.Errorf("Requests %d, want 1000", p.Requests())
		}
		return h.Fired()
	}
	a, b := fired(), fired()
	if a < 200 || a > 400 {
		t.Errorf("Prob 0.3 fired %d of 1000, want 200..400", a)
	}
	if a != b {
		t.Errorf("same seed, same requests: fired %d then %d", a, b)
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		name   string
		rule   Rule
		method string
		path   string
		header map[string]string
		fires  bool
	}{
		{"method", Rule{Method: "PUT"}, "PUT", "/bkt/k", nil, true},
		{"other method", Rule{Method: "PUT"}, "GET", "/bkt/k", nil, false},
		{"key", Rule{Key: regexp.MustCompile(`^pending/`)}, "GET", "/bkt/pending/a", nil, true},
		{"other key", Rule{Key: regexp.MustCompile(`^pending/`)}, "GET", "/bkt/done/a", nil, false},
		{"escaped key", Rule{Key: regexp.MustCompile(`^dir/a b/c$`)}, "GET", "/bkt/dir/a%20b%2Fc", nil, true},
		{"bucket key", Rule{Key: regexp.MustCompile(`^$`)}, "GET", "/bkt?list-type=2", nil, true},
		{"bucket key, object", Rule{Key: regexp.MustCompile(`^$`)}, "GET", "/bkt/a", nil, false},
		{"query", Rule{Query: "list-type=2"}, "GET", "/bkt?list-type=2&prefix=pending%2F", nil, true},
		{"no query", Rule{Query: "list-type=2"}, "GET", "/bkt/a", nil, false},
		{"header value", Rule{Header: map[string]string{"If-None-Match": "*"}}, "PUT", "/bkt/a", map[string]string{"If-None-Match": "*"}, true},
		{"header other value", Rule{Header: map[string]string{"If-None-Match": "*"}}, "PUT", "/bkt/a", map[string]string{"If-None-Match": `"e"`}, false},
		{"header absent", Rule{Header: map[string]string{"If-None-Match": "*"}}, "PUT", "/bkt/a", nil, false},
		{"header any", Rule{Header: map[string]string{"If-Match": ""}}, "PUT", "/bkt/a", map[string]string{"If-Match": `"e"`}, true},
		{"header any, absent", Rule{Header: map[string]string{"If-Match": ""}}, "PUT", "/bkt/a", nil, false},
		{"header name case", Rule{Header: map[string]string{"if-none-match": "*"}}, "PUT", "/bkt/a", map[string]string{"If-None-Match": "*"}, true},
		{"all", Rule{Method: "DELETE", Key: regexp.MustCompile(`^claimed/`), Header: map[string]string{"If-Match": ""}}, "DELETE", "/bkt/claimed/x", map[string]string{"If-Match": `"e"`}, true},
	}
	p, _ := setup(t)
	c := newClient(t, true)
	for _, tt := range tests {
		p.Clear()
		tt.rule.Action, tt.rule.Status = ErrorBefore, http.StatusTeapot
		h := p.Add(tt.rule)
		r := do(c, tt.method, p.URL()+tt.path, "", tt.header)
		if r.err != nil {
			t.Fatalf("%s: %v", tt.name, r.err)
		}
		if fired := r.status == http.StatusTeapot; fired != tt.fires || h.Fired() != btoi(tt.fires) {
			t.Errorf("%s: status %d, Fired %d; want fires %v", tt.name, r.status, h.Fired(), tt.fires)
		}
	}
}

func TestSetDown(t *testing.T) {
	p, up := setup(t)
	c := newClient(t, false)
	h := p.Add(Rule{}) // counts what reaches the rules
	p.SetDown(503)
	if r := do(c, "GET", p.URL()+"/bkt/k", "", nil); r.err != nil || r.status != 503 || s3Code(t, r.body) != "SlowDown" {
		t.Errorf("down 503: %d %q, %v", r.status, r.body, r.err)
	}
	p.SetDown(0)
	if r := do(c, "GET", p.URL()+"/bkt/k", "", nil); r.err == nil {
		t.Errorf("down with reset: got %d, want an error", r.status)
	}
	if n := len(up.seen()); n != 0 || h.Fired() != 0 {
		t.Errorf("while down: upstream saw %d, rule fired %d; want 0, 0", n, h.Fired())
	}
	p.SetUp()
	if r := do(c, "GET", p.URL()+"/bkt/k", "", nil); r.err != nil || r.status != 200 {
		t.Errorf("up: %d, %v", r.status, r.err)
	}
	if n := len(up.seen()); n != 1 || h.Fired() != 1 {
		t.Errorf("after up: upstream saw %d, rule fired %d; want 1, 1", n, h.Fired())
	}
}

// Rules added and removed while requests run: for the race detector, and
// every request is either faulted or reaches the server.
func TestConcurrent(t *testing.T) {
	p, up := setup(t)
	c := newClient(t, true)
	h := p.Add(Rule{Method: "PUT", Action: ErrorBefore, Prob: 0.5})
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			for range 20 {
				if r := do(c, "PUT", p.URL()+"/bkt/k", "x", nil); r.err != nil {
					t.Error(r.err)
				}
				p.Add(Rule{Method: "GET"}).Remove()
			}
		})
	}
	wg.Wait()
	if f, n := h.Fired(), len(up.seen()); f+n != 400 || f == 0 || n == 0 {
		t.Errorf("fired %d, upstream saw %d; want both > 0, summing to 400", f, n)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
