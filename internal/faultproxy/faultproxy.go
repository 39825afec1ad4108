// Package faultproxy is a fault-injecting HTTP reverse proxy for tests. It sits
// between fleetd's S3 client and a local S3 server and, by rule, fails, resets,
// delays or holds chosen requests, so a test can put an S3 error, a lost answer
// or a torn connection at an exact step of the queue protocol.
//
// Requests are forwarded byte for byte with the Host header the client sent, so
// SigV4 signatures made for the proxy's address stay valid at the server.
// Object keys are read from path-style URLs: /<bucket>/<key>.
package faultproxy

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Action is what a rule does to a request it fires on.
type Action int

const (
	// Pass forwards the request untouched: a rule that only counts or waits.
	Pass Action = iota
	// ErrorBefore answers Status with an S3 XML error and never forwards. A
	// 2xx Status is answered with no body: a fake success, as from a store
	// that accepts a request and ignores it (or its conditions).
	ErrorBefore
	// ErrorAfter forwards, reads the whole upstream response, then answers
	// Status instead: the write landed, the answer is lost.
	ErrorAfter
	// ResetBefore resets the client connection (TCP RST) and never forwards.
	ResetBefore
	// ResetAfter forwards, reads the whole upstream response, then resets the
	// client connection.
	ResetAfter
	// ResetMidResponse forwards, sends the client the upstream status line,
	// headers and about half the body, then resets the connection. When the
	// body is empty (a PUT, a HEAD) the blank line ending the headers is held
	// back instead, so the client never sees a complete response.
	ResetMidResponse
	// Delay sleeps Rule.Delay, then forwards. Close ends the sleep early and
	// resets the request.
	Delay
	// Hold blocks the request before forwarding until Handle.Release or
	// Handle.Remove (then it is forwarded), or Clear or Close. A client that
	// gives up meanwhile ends it (reset, not forwarded) unless Rule.Outlive.
	Hold
)

// ErrRemoved is returned by Handle.Wait when the rule was removed (by Remove,
// Clear or Close) before it fired often enough.
var ErrRemoved = errors.New("faultproxy: rule removed")

// Rule says which requests to fault and how. A zero field matches anything.
type Rule struct {
	// Method is the HTTP method to match, e.g. "PUT"; "" matches any.
	Method string
	// Key is matched against the unescaped object key, the path after
	// "/<bucket>/". A bucket-level request (ListObjectsV2) has key "".
	// nil matches any.
	Key *regexp.Regexp
	// Query, if set, must be a substring of the raw query, e.g. "list-type=2".
	Query string
	// Header lists headers that must be present; a non-empty value must equal
	// the header's first value exactly. {"If-Match": ""} matches any If-Match.
	Header map[string]string

	// Action is what the rule does when it fires.
	Action Action
	// Status is the answer of ErrorBefore and ErrorAfter; 0 means 503.
	Status int
	// Code is the S3 error code; "" means SlowDown for 503, else InternalError.
	Code string
	// Delay is how long Delay sleeps.
	Delay time.Duration
	// Outlive makes Hold forward a held request on release even if its client
	// has given up meanwhile, the way a buffering proxy or a slow path delivers
	// a request its sender abandoned: the body is read before the hold, and
	// the answer goes to the client only if it is still there. Handle.Forwarded
	// tells when such a request has been answered, and how.
	Outlive bool

	// Prob is the chance that the rule fires on a matching request, drawn
	// from the proxy's seeded generator; 0 (or 1) means always.
	Prob float64
	// Times caps how often the rule fires; 0 means no cap.
	Times int
	// Skip lets the first Skip matching requests through before the rule may
	// fire: Skip 1 faults the second PUT of a key.
	Skip int
}

func (r *Rule) matches(req *http.Request, key string) bool {
	if r.Method != "" && req.Method != r.Method {
		return false
	}
	if r.Key != nil && !r.Key.MatchString(key) {
		return false
	}
	if r.Query != "" && !strings.Contains(req.URL.RawQuery, r.Query) {
		return false
	}
	for name, want := range r.Header {
		got := req.Header[textproto.CanonicalMIMEHeaderKey(name)]
		if len(got) == 0 || (want != "" && got[0] != want) {
			return false
		}
	}
	return true
}

// keyOf returns the object key of an unescaped path-style path:
// "/bkt/a/b" gives "a/b"; "/bkt" and "/bkt/" give "".
func keyOf(path string) string {
	_, key, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	return key
}

// Handle is a rule added to a Proxy. Its methods are safe for concurrent use.
type Handle struct {
	p    *Proxy
	rule Rule

	// Guarded by p.mu.
	matched   int
	fired     int
	forwarded []int // statuses the server gave held requests, Outlive only
	removed   bool
	released  bool
	release   chan struct{} // closed by Release or Remove: held requests go on
	changed   chan struct{} // closed and replaced whenever fired or removed changes
}

// Fired returns how often the rule has fired so far. A Hold rule fires when
// it starts holding a request.
func (h *Handle) Fired() int {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	return h.fired
}

// Wait blocks until the rule has fired at least n times. It returns
// ErrRemoved if the rule is removed first, or the context's error.
func (h *Handle) Wait(ctx context.Context, n int) error {
	for {
		h.p.mu.Lock()
		fired, removed, changed := h.fired, h.removed, h.changed
		h.p.mu.Unlock()
		if fired >= n {
			return nil
		}
		if removed {
			return fmt.Errorf("wait for %d fires, have %d: %w", n, fired, ErrRemoved)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("faultproxy: wait for %d fires, have %d: %w", n, fired, ctx.Err())
		}
	}
}

// Forwarded blocks until n requests held by an Outlive rule have been
// forwarded and answered, and returns the statuses the server gave all of
// them so far, in order. A removed rule still forwards what it held, so only
// the context ends the wait early.
func (h *Handle) Forwarded(ctx context.Context, n int) ([]int, error) {
	for {
		h.p.mu.Lock()
		got, changed := slices.Clone(h.forwarded), h.changed
		h.p.mu.Unlock()
		if len(got) >= n {
			return got, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return got, fmt.Errorf("faultproxy: wait for %d forwarded, have %d: %w", n, len(got), ctx.Err())
		}
	}
}

// Release lets every request the rule holds go on to the server. A released
// Hold rule still fires, and counts, but forwards at once like Pass.
func (h *Handle) Release() {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	h.releaseLocked()
}

// Remove stops the rule from matching and lets the requests it holds go on.
func (h *Handle) Remove() {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	if h.removed {
		return
	}
	h.removeLocked()
	h.p.rules = slices.DeleteFunc(h.p.rules, func(x *Handle) bool { return x == h })
}

func (h *Handle) releaseLocked() {
	if !h.released {
		h.released = true
		close(h.release)
	}
}

// removeLocked marks the rule removed; the caller takes it out of p.rules.
func (h *Handle) removeLocked() {
	h.removed = true
	h.releaseLocked()
	h.broadcastLocked()
}

func (h *Handle) broadcastLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// Proxy is a running fault-injecting proxy. Its methods are safe for
// concurrent use.
type Proxy struct {
	url       string
	ctx       context.Context // ends with the proxy: what an Outlive request is forwarded under
	srv       *http.Server
	rp        *httputil.ReverseProxy
	transport *http.Transport
	cancel    context.CancelFunc // cancels every request's context
	served    chan struct{}      // closed when Serve returns
	inflight  sync.WaitGroup     // requests being handled
	requests  atomic.Int64

	mu         sync.Mutex
	rng        *rand.Rand
	rules      []*Handle
	down       bool
	downStatus int
	closed     bool
}

// Start listens on 127.0.0.1:0 and forwards to target, e.g.
// "http://127.0.0.1:7070". seed seeds the generator that rolls Rule.Prob, so a
// run with the same requests in the same order fires the same faults.
func Start(target string, seed uint64) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: parse target %q: %w", target, err)
	}
	if u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: target %q: want scheme://host:port", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		url:    "http://" + ln.Addr().String(),
		ctx:    ctx,
		cancel: cancel,
		served: make(chan struct{}),
		rng:    rand.New(rand.NewPCG(seed, seed)),
		transport: &http.Transport{
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			// A transparent gunzip would change the bytes the client sees.
			DisableCompression: true,
		},
	}
	// A client that gives up mid-request is routine in these tests, not news.
	discard := log.New(io.Discard, "", 0)
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			// SigV4 signed the Host the client dialled: the proxy's.
			pr.Out.Host = pr.In.Host
		},
		Transport: p.transport,
		ErrorLog:  discard,
	}
	p.srv = &http.Server{
		Handler:  http.HandlerFunc(p.serve),
		ErrorLog: discard,
		// Every request's context ends with the proxy, so Close wakes held
		// and delayed requests and aborts forwarded ones.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	go func() {
		defer close(p.served)
		_ = p.srv.Serve(ln)
	}()
	return p, nil
}

// URL returns the proxy's base URL, "http://127.0.0.1:PORT".
func (p *Proxy) URL() string { return p.url }

// Requests returns how many requests the proxy has received, faulted or not.
func (p *Proxy) Requests() int64 { return p.requests.Load() }

// Add appends a rule. Rules are checked in the order added; the first that
// matches and fires decides. One that matches but does not fire (Prob, Skip,
// Times) lets the next be checked; when none fires the request is forwarded.
// Add panics on a Status that is not an HTTP error-range status.
func (p *Proxy) Add(r Rule) *Handle {
	checkStatus(r.Status)
	r.Header = maps.Clone(r.Header) // the caller may reuse its map
	h := &Handle{p: p, rule: r, release: make(chan struct{}), changed: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		h.removeLocked()
		return h
	}
	p.rules = append(p.rules, h)
	return h
}

// Clear removes every rule and lets the requests they hold go on.
func (p *Proxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, h := range p.rules {
		h.removeLocked()
	}
	p.rules = nil
}

// SetDown simulates an outage: until SetUp, every request is answered with an
// S3 error of the given status, or reset when status is 0. Rules are not
// consulted while down.
func (p *Proxy) SetDown(status int) {
	checkStatus(status)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down, p.downStatus = true, status
}

// SetUp ends an outage begun by SetDown.
func (p *Proxy) SetUp() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// Close stops listening, resets held and delayed requests, aborts forwarded
// ones, and returns once every request handler has ended. It is idempotent.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	// Cancel before Clear: a held request woken by either sees the proxy
	// closing and resets instead of forwarding to a server that may be gone.
	p.cancel()
	p.Clear()
	_ = p.srv.Close()
	p.inflight.Wait()
	<-p.served
	p.transport.CloseIdleConnections()
}

func checkStatus(status int) {
	if status != 0 && (status < 200 || status > 599) {
		panic(fmt.Sprintf("faultproxy: status %d is not an HTTP status to answer with", status))
	}
}

// fault is what one request gets, decided under p.mu.
type fault struct {
	action  Action
	status  int
	code    string
	delay   time.Duration
	release <-chan struct{} // Hold
	outlive *Handle         // Hold with Outlive: the rule, told each answer
}

func (p *Proxy) decideLocked(r *http.Request) fault {
	if p.down {
		if p.downStatus == 0 {
			return fault{action: ResetBefore}
		}
		return fault{action: ErrorBefore, status: p.downStatus}
	}
	key := keyOf(r.URL.Path)
	for _, h := range p.rules {
		rule := &h.rule
		if !rule.matches(r, key) {
			continue
		}
		h.matched++
		if h.matched <= rule.Skip || (rule.Times > 0 && h.fired >= rule.Times) {
			continue
		}
		// Rolled only for rules that could fire, so the draws follow the
		// requests a test makes, not the rules it has.
		if rule.Prob != 0 && p.rng.Float64() >= rule.Prob {
			continue
		}
		h.fired++
		h.broadcastLocked()
		f := fault{action: rule.Action, status: rule.Status, code: rule.Code, delay: rule.Delay}
		if f.action == Hold {
			if h.released && !rule.Outlive {
				f.action = Pass
			}
			f.release = h.release
			if rule.Outlive {
				f.outlive = h
			}
		}
		return f
	}
	return fault{action: Pass}
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	n := p.requests.Add(1)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		reset(w)
		return
	}
	// Added under p.mu while open, so Close's Wait sees every handler.
	p.inflight.Add(1)
	defer p.inflight.Done()
	f := p.decideLocked(r)
	p.mu.Unlock()

	ctx := r.Context() // ends when the client goes or the proxy closes
	switch f.action {
	case ErrorBefore:
		writeError(w, r, f.status, f.code, n)
	case ResetBefore:
		reset(w)
	case Delay:
		t := time.NewTimer(f.delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			reset(w)
			return
		}
		p.rp.ServeHTTP(w, r)
	case Hold:
		if f.outlive != nil {
			p.holdOutliving(w, r, f)
			return
		}
		select {
		case <-f.release:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			reset(w)
			return
		}
		p.rp.ServeHTTP(w, r)
	case ErrorAfter, ResetAfter, ResetMidResponse:
		c := &capture{header: http.Header{}}
		p.rp.ServeHTTP(c, r)
		switch f.action {
		case ErrorAfter:
			writeError(w, r, f.status, f.code, n)
		case ResetAfter:
			reset(w)
		default:
			resetMid(w, r, c)
		}
	default:
		p.rp.ServeHTTP(w, r)
	}
}

// holdOutliving holds r until release and then forwards it whether or not its
// client is still there; only Close ends the hold without forwarding.
func (p *Proxy) holdOutliving(w http.ResponseWriter, r *http.Request, f fault) {
	// Read while the client is there: once it has gone the body is too.
	body, err := io.ReadAll(r.Body)
	if err != nil {
		reset(w)
		return
	}
	select {
	case <-f.release:
	case <-p.ctx.Done():
	}
	if p.ctx.Err() != nil {
		reset(w)
		return
	}
	out := r.Clone(p.ctx)
	out.Body = io.NopCloser(bytes.NewReader(body))
	out.ContentLength = int64(len(body))
	c := &capture{header: http.Header{}}
	p.rp.ServeHTTP(c, out)
	p.mu.Lock()
	f.outlive.forwarded = append(f.outlive.forwarded, c.status)
	f.outlive.broadcastLocked()
	p.mu.Unlock()
	if r.Context().Err() != nil {
		return // the client gave up: nobody reads the answer
	}
	maps.Copy(w.Header(), c.header)
	if c.status != 0 {
		w.WriteHeader(c.status)
	}
	_, _ = w.Write(c.body.Bytes())
}

// capture is a ResponseWriter that keeps the upstream response, so an After
// action can decide what the client gets once the server has answered.
type capture struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (c *capture) Header() http.Header { return c.header }

func (c *capture) WriteHeader(status int) {
	// 1xx answers are interim; keep the final one.
	if c.status == 0 && status >= 200 {
		c.status = status
	}
}

func (c *capture) Write(b []byte) (int, error) {
	c.WriteHeader(http.StatusOK)
	return c.body.Write(b)
}

type s3Error struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string
	Message   string
	RequestID string `xml:"RequestId"`
}

func writeError(w http.ResponseWriter, r *http.Request, status int, code string, n int64) {
	if status == 0 {
		status = http.StatusServiceUnavailable
	}
	if code == "" {
		code = "InternalError"
		if status == http.StatusServiceUnavailable {
			code = "SlowDown" // what S3 says when it sheds load; the SDK retries it
		}
	}
	id := fmt.Sprintf("faultproxy-%d", n)
	w.Header().Set("X-Amz-Request-Id", id)
	if status < 300 {
		// An S3 client reads a 2xx with an <Error> body as a 500 (S3's
		// "200 error"); a fake success must have no body.
		w.Header().Set("ETag", fmt.Sprintf(`"faultproxy-%d"`, n))
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(status)
		return
	}
	if r.Method == http.MethodHead {
		// A HEAD answer has no body; the SDK reads the status alone.
		w.WriteHeader(status)
		return
	}
	body, _ := xml.Marshal(s3Error{Code: code, Message: "injected by faultproxy", RequestID: id})
	body = append([]byte(xml.Header[:len(xml.Header)-1]), body...)
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// reset drops the client connection with a TCP RST, the way a crashed server
// or a load balancer drops it: the client sees an error, not an answer.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not a hijackable connection: aborting the handler is the nearest thing.
		panic(http.ErrAbortHandler)
	}
	resetConn(conn)
}

func resetConn(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		// Linger 0 makes Close send RST instead of FIN.
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// resetMid writes the start of the captured response by hand, so exactly how
// much the client gets is known, then resets.
func resetMid(w http.ResponseWriter, r *http.Request, c *capture) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	status := c.status
	if status == 0 {
		status = http.StatusOK
	}
	body := c.body.Bytes()
	h := c.header.Clone()
	if r.Method != http.MethodHead {
		// Announce the whole body, so the client knows it was cut short.
		h.Set("Content-Length", strconv.Itoa(len(body)))
		h.Del("Transfer-Encoding")
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	_ = h.Write(&b)
	if len(body) > 0 {
		b.WriteString("\r\n")
		b.Write(body[:len(body)/2])
	}
	_, _ = conn.Write(b.Bytes())
	resetConn(conn)
}
