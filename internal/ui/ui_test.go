package ui

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
)

// now is the UI's clock, and when the results in the fixture finished.
var now = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// object is what a fixture writes: age is how long ago, by the store's clock.
type object struct {
	body []byte
	meta map[string]string
	age  time.Duration
}

// countingStore is an s3mem bucket, listed two keys a page, counting the
// requests the UI makes.
type countingStore struct {
	*s3mem.Store
	mu    sync.Mutex
	heads int
	gets  int
	lists int
}

func newStore() *countingStore { return &countingStore{Store: s3mem.New(s3mem.Quirks{PageSize: 2})} }

func (f *countingStore) put(key string, o object) {
	f.PutAt(key, o.body, o.meta, time.Now().Add(-o.age))
}

func (f *countingStore) List(ctx context.Context, prefix string, fn func(store.Page) error) error {
	f.mu.Lock()
	f.lists++
	f.mu.Unlock()
	return f.Store.List(ctx, prefix, fn)
}

func (f *countingStore) Get(ctx context.Context, key string, limit int64) (store.Object, error) {
	f.mu.Lock()
	f.gets++
	f.mu.Unlock()
	return f.Store.Get(ctx, key, limit)
}

func (f *countingStore) Head(ctx context.Context, key string) (store.Object, error) {
	f.mu.Lock()
	f.heads++
	f.mu.Unlock()
	return f.Store.Head(ctx, key)
}

// fakeAdmin records the actions asked for.
type fakeAdmin struct {
	mu       sync.Mutex
	requeued []string
	requeue  func(id string) error
}

func (a *fakeAdmin) Requeue(_ context.Context, ids []string, _ bool, _ time.Duration) ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.requeue != nil {
		if err := a.requeue(ids[0]); err != nil {
			return nil, err
		}
	}
	a.requeued = append(a.requeued, ids...)
	return ids, nil
}
func (a *fakeAdmin) Cancel(context.Context, string, string) (protocol.CancelResult, error) {
	return protocol.CancelResult{Node: "n1"}, nil
}
func (a *fakeAdmin) Pause(context.Context, string, bool, string) ([]string, error) {
	return []string{"fleet"}, nil
}
func (a *fakeAdmin) Resume(context.Context, string, bool) ([]string, error) {
	return []string{"fleet"}, nil
}

func lease(node, state string, attempts int, ttl time.Duration) []byte {
	return fmt.Appendf(nil, `{"node":%q,"state":%q,"attempts":%d,"ttl_ms":%d,"token":"t","nonce":"n"}`, node, state, attempts, ttl.Milliseconds())
}

func failure(node, reason string, exit string) map[string]string {
	m := map[string]string{"fleetd-outcome": "failed", "fleetd-reason": reason, "fleetd-node": node,
		"fleetd-attempts": "2", "fleetd-finished": now.Add(-time.Minute).Format(time.RFC3339Nano)}
	if strings.HasPrefix(exit, "SIG") {
		m["fleetd-signal"] = exit
	} else {
		m["fleetd-exit-code"] = exit
	}
	return m
}

// hostile ids: markup that must come out as text, in element content and in
// attribute values (a hidden field, a link).
const (
	hostileID     = `<script>window.pwned=1`
	hostileAttrID = `q"><b>pwn`
)

// queueFixture is a small queue with one of everything.
func queueFixture() *countingStore {
	f := newStore()
	for _, id := range []string{"p1", "p2", "p3"} {
		f.put("fleet/pending/"+id+".json", object{body: []byte(`{}`), age: 30 * time.Second})
	}
	f.put("fleet/pending/old.json", object{body: []byte(`{}`), age: 90 * time.Second})
	f.put("fleet/pending/notes.txt", object{age: time.Hour}) // not work: not counted, not aged
	f.put("fleet/claimed/run-a.json", object{body: []byte(`{}`), age: 20 * time.Second})
	f.put("fleet/leases/run-a.json", object{body: lease("node-a", "running", 1, 3*time.Second), age: 2 * time.Second})
	f.put("fleet/claimed/run-b.json", object{body: []byte(`{}`), age: 50 * time.Second})
	f.put("fleet/leases/run-b.json", object{body: lease("node-b", "running", 2, 3*time.Second), age: 9 * time.Second})
	f.put("fleet/claimed/orphan.json", object{body: []byte(`{}`), age: 10 * time.Minute})
	f.put("fleet/completed/c1.json", object{body: []byte(`{}`), age: 5 * time.Second,
		meta: map[string]string{"fleetd-outcome": "completed", "fleetd-node": "node-c"}})
	f.put("fleet/failed/f-old.json", object{body: []byte(`{"spec":{}}`), age: time.Hour, meta: failure("node-a", "supervisor exit 3", "3")})
	f.put("fleet/failed/f-new.json", object{body: []byte(`{"spec":{}}`), age: time.Minute, meta: failure("node-b", "supervisor killed by SIGKILL", "SIGKILL")})
	f.put("fleet/failed/"+hostileID+".json", object{body: []byte(`{"x":"</pre><script>window.pwned=2</script>"}`), age: 2 * time.Hour,
		meta: failure("node-<i>x</i>", "<script>alert(1)</script>", "7")})
	f.put("fleet/failed/"+hostileAttrID+".json", object{body: []byte(`{}`), age: 3 * time.Hour, meta: failure("node-a", "x", "1")})
	return f
}

type harness struct {
	t      *testing.T
	srv    *httptest.Server
	client *http.Client
	store  *countingStore
	admin  *fakeAdmin
	clock  *time.Time
}

func setup(t *testing.T, storage *countingStore, mod func(*Config)) *harness {
	t.Helper()
	clock := now
	h := &harness{t: t, store: storage, admin: &fakeAdmin{}, clock: &clock}
	var mu sync.Mutex
	cfg := Config{Store: storage, Layout: store.NewLayout("fleet", ""), Bucket: "bkt", Prefix: "fleet", TTL: time.Minute,
		Admin: h.admin, Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return *h.clock }}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = httptest.NewServer(s)
	t.Cleanup(h.srv.Close)
	// A transport of its own, its connections closed before the server: a
	// test in a synctest bubble ends only once its goroutines have.
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	jar, _ := cookiejar.New(nil)
	h.client = &http.Client{Transport: tr, Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return h
}

func (h *harness) get(path string) (int, string) {
	h.t.Helper()
	resp, err := h.client.Get(h.srv.URL + path)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// post sends a form as a page of the UI would, with header overrides.
func (h *harness) post(path string, form url.Values, headers map[string]string) (*http.Response, string) {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", h.srv.URL)
	for k, v := range headers {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// csrf is the token of the forms on the page.
func (h *harness) csrf() string {
	h.t.Helper()
	_, body := h.get("/")
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if m == nil {
		h.t.Fatalf("no CSRF field on the page")
	}
	return m[1]
}

// cell returns the text of the element with the given id attribute.
func cell(body, id string) string {
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)`).FindStringSubmatch(body)
	if m == nil {
		return "<missing>"
	}
	return strings.TrimSpace(m[1])
}

// row returns the HTML of the table row of a spec id in a section's rows.
func row(body, class, id string) string {
	attr := `data-id="` + strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;").Replace(id) + `"`
	i := strings.Index(body, `class="`+class)
	for i >= 0 {
		end := strings.Index(body[i:], "</tr>")
		if strings.Contains(body[i:i+end], attr) {
			return body[i : i+end]
		}
		next := strings.Index(body[i+1:], `class="`+class)
		if next < 0 {
			break
		}
		i += 1 + next
	}
	return ""
}

func TestOverviewCountsAreBounded(t *testing.T) {
	// In a bubble the store's clock stands still: ages are the fixture's.
	synctest.Test(t, func(t *testing.T) {
		h := setup(t, queueFixture(), func(c *Config) { c.KeyLimit = 3 })
		code, body := h.get("/")
		if code != http.StatusOK {
			t.Fatalf("GET / = %d", code)
		}
		for _, tt := range []struct{ id, want string }{
			{"count-pending", "≥ 3"}, // 4 pending: the listing stopped at 3
			{"count-claimed", "3"},   // exactly the limit, and no more: exact
			{"count-completed", "1"},
			{"count-failed", "≥ 3"},
			{"oldest-pending", "1m30s"},
			{"paused", "running"},
		} {
			if got := cell(body, tt.id); got != tt.want {
				t.Errorf("%s = %q, want %q", tt.id, got, tt.want)
			}
		}
		if !strings.Contains(body, `id="count-claimed" data-n="3" data-at-least="false"`) {
			t.Errorf("claimed count at the limit is marked a lower bound")
		}

		h.store.put("fleet/pending/!paused", object{body: []byte(`{"by":"ops"}`)})
		*h.clock = h.clock.Add(2 * time.Second)
		if _, body := h.get("/live"); !strings.Contains(body, "paused") || cell(body, "paused") == "running" {
			t.Errorf("a lane with its pause marker does not show paused")
		}
	})
}

func TestInFlightShowsNodesAndStaleLeases(t *testing.T) {
	// In a bubble the store's clock stands still: ages are the fixture's.
	synctest.Test(t, func(t *testing.T) {
		h := setup(t, queueFixture(), nil)
		_, body := h.get("/")
		a, b, o := row(body, "flight", "run-a"), row(body, "flight", "run-b"), row(body, "flight", "orphan")
		if !strings.Contains(a, `class="node">node-a<`) || !strings.Contains(a, "running") || strings.Contains(a, "stale") {
			t.Errorf("run-a (lease 2 s old, ttl 3 s) row:\n%s", a)
		}
		// 9 s > 3 s + 1 s: recovery may take it over.
		if !strings.Contains(b, `class="flight stale"`) || !strings.Contains(b, `class="attempt">2<`) || !strings.Contains(b, "9s") {
			t.Errorf("run-b (lease 9 s old, ttl 3 s) is not shown stale:\n%s", b)
		}
		if !strings.Contains(o, "no lease") || !strings.Contains(o, "stale") {
			t.Errorf("a claim without a lease, 10 min old, is not shown stale:\n%s", o)
		}
		// Nodes: every node in a lease or a recent result, with what it runs.
		for _, want := range []string{`data-node="node-a"`, `data-node="node-b"`, `data-node="node-c"`} {
			if !strings.Contains(body, want) {
				t.Errorf("nodes lack %s", want)
			}
		}
		i := strings.Index(body, `data-node="node-c"`)
		if i < 0 || !strings.Contains(body[i:i+400], "completed") || !strings.Contains(body[i:i+400], "c1") {
			t.Errorf("node-c's last result (completed c1) is not shown")
		}
	})
}

func TestFailuresNewestFirstWithRecordAndFilter(t *testing.T) {
	h := setup(t, queueFixture(), nil)
	_, body := h.get("/")
	iNew, iOld := strings.Index(body, `data-id="f-new"`), strings.Index(body, `data-id="f-old"`)
	if iNew < 0 || iOld < 0 || iNew > iOld {
		t.Errorf("failures not newest first (f-new at %d, f-old at %d)", iNew, iOld)
	}
	f := row(body, "failure", "f-new")
	for _, want := range []string{"supervisor killed by SIGKILL", `class="exit">SIGKILL<`, `class="node">node-b<`, `class="attempts">2<`, "failed"} {
		if !strings.Contains(f, want) {
			t.Errorf("f-new row lacks %q:\n%s", want, f)
		}
	}
	if f := row(body, "failure", "f-old"); !strings.Contains(f, `class="exit">3<`) {
		t.Errorf("f-old row lacks its exit code:\n%s", f)
	}
	_, body = h.get("/?reason=EXIT+3")
	if !strings.Contains(body, `data-id="f-old"`) || strings.Contains(body, `data-id="f-new"`) {
		t.Errorf("filter by reason %q shows the wrong failures", "exit 3")
	}
	// Without --allow-actions: no buttons, no CSRF field.
	if strings.Contains(body, "requeue</button>") || strings.Contains(body, `name="csrf"`) {
		t.Errorf("actions shown while they are off")
	}
}

func TestBucketContentIsEscaped(t *testing.T) {
	h := setup(t, queueFixture(), func(c *Config) { c.AllowActions = true })
	_, body := h.get("/")
	for _, bad := range []string{"<script>window", "<script>alert", "<b>pwn", "<i>x</i>"} {
		if strings.Contains(body, bad) {
			t.Errorf("the page holds %q unescaped", bad)
		}
	}
	for _, want := range []string{"&lt;script&gt;window.pwned=1<", "&lt;script&gt;alert(1)&lt;/script&gt;", "q&#34;&gt;&lt;b&gt;pwn"} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks the escaped text %q", want)
		}
	}
	// The one script is ours.
	if n := strings.Count(body, "<script"); n != 1 {
		t.Errorf("%d script elements, want 1", n)
	}
	// The spec's body, from a link whose id is escaped as a URL query value.
	if !strings.Contains(body, `/spec?state=failed&amp;id=%3cscript%3ewindow.pwned%3d1"`) {
		t.Errorf("the link to the hostile spec is not URL-escaped")
	}
	code, spec := h.get("/spec?state=failed&id=" + url.QueryEscape(hostileID))
	if code != http.StatusOK || strings.Contains(spec, "<script>window") || !strings.Contains(spec, "&lt;/pre&gt;&lt;script&gt;window.pwned=2") {
		t.Errorf("spec page (%d) does not show the body escaped:\n%s", code, spec)
	}
}

func TestSpecBodyIsCapped(t *testing.T) {
	f := queueFixture()
	f.put("fleet/failed/big.json", object{body: []byte(strings.Repeat("x", 100)), age: time.Second, meta: failure("n", "r", "1")})
	h := setup(t, f, func(c *Config) { c.BodyLimit = 50 })
	if code, body := h.get("/spec?state=failed&id=big"); code != http.StatusOK || strings.Contains(body, "xxxxx") || !strings.Contains(body, "100 bytes: too large") {
		t.Errorf("a 100-byte spec over a 50-byte cap: %d\n%s", code, body)
	}
	for _, q := range []string{"state=leases&id=big", "state=failed&id=a/b", "state=failed&id="} {
		if code, _ := h.get("/spec?" + q); code != http.StatusBadRequest {
			t.Errorf("GET /spec?%s = %d, want 400", q, code)
		}
	}
	if code, _ := h.get("/spec?state=failed&id=gone"); code != http.StatusNotFound {
		t.Errorf("GET of a missing spec = %d, want 404", code)
	}
}

// TestRefreshReadsOnlyWhatChanged: result records are HEADed once per
// version, leases read once per renewal; two pages within a second share
// one read of the bucket.
func TestRefreshReadsOnlyWhatChanged(t *testing.T) {
	h := setup(t, queueFixture(), nil)
	h.get("/")
	heads, gets, lists := h.store.heads, h.store.gets, h.store.lists
	// 5 LISTs for the snapshot, 2 for the chart (completed/, failed/).
	if heads != 5 || gets != 2 || lists != 7 {
		t.Errorf("first refresh: %d HEAD, %d GET, %d LIST; want 5, 2, 7", heads, gets, lists)
	}
	h.get("/live")
	if h.store.lists != lists {
		t.Errorf("a second page within a second listed the bucket again")
	}
	*h.clock = h.clock.Add(2 * time.Second)
	// A renewal writes other bytes (a new nonce): another ETag.
	renewed := strings.Replace(string(lease("node-a", "running", 1, 3*time.Second)), `"nonce":"n"`, `"nonce":"n2"`, 1)
	h.store.put("fleet/leases/run-a.json", object{body: []byte(renewed)})
	h.get("/live")
	if h.store.heads != heads || h.store.gets != gets+1 || h.store.lists != lists+5 {
		t.Errorf("refresh after one renewal: %d HEAD, %d GET, %d LIST more; want 0, 1 and 5 (the chart's listing is a minute old at most)",
			h.store.heads-heads, h.store.gets-gets, h.store.lists-lists)
	}
}

func TestActions(t *testing.T) {
	h := setup(t, queueFixture(), func(c *Config) { c.AllowActions = true })
	token := h.csrf()
	form := url.Values{"csrf": {token}, "id": {"f-old"}}
	for _, tt := range []struct {
		name    string
		form    url.Values
		headers map[string]string
	}{
		{"another origin", form, map[string]string{"Origin": "http://evil.example"}},
		{"another origin by its referer", form, map[string]string{"Origin": "", "Referer": "http://evil.example/x"}},
		{"no origin and no referer", form, map[string]string{"Origin": ""}},
		{"no token in the form", url.Values{"id": {"f-old"}}, nil},
		{"a wrong token", url.Values{"csrf": {"guess"}, "id": {"f-old"}}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := h.post("/requeue", tt.form, tt.headers)
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("POST = %d, want 403", resp.StatusCode)
			}
		})
	}
	if len(h.admin.requeued) != 0 {
		t.Fatalf("a refused POST requeued %v", h.admin.requeued)
	}
	// Without the cookie (a form posted from another site: SameSite=Strict).
	bare := &http.Client{CheckRedirect: h.client.CheckRedirect}
	req, _ := http.NewRequest(http.MethodPost, h.srv.URL+"/requeue", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", h.srv.URL)
	if resp, err := bare.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST without the CSRF cookie = %v, %v; want 403", resp.StatusCode, err)
	}

	resp, _ := h.post("/requeue", form, nil)
	if resp.StatusCode != http.StatusSeeOther || !slices.Equal(h.admin.requeued, []string{"f-old"}) {
		t.Fatalf("POST /requeue = %d, requeued %v; want 303 and [f-old]", resp.StatusCode, h.admin.requeued)
	}
	if _, body := h.get("/"); cell(body, "flash") != "requeued f-old" {
		t.Errorf("flash after a requeue = %q", cell(body, "flash"))
	}
	if _, body := h.get("/"); cell(body, "flash") != "<missing>" {
		t.Errorf("the flash is shown twice")
	}
	h.admin.requeue = func(string) error { return fmt.Errorf("requeue: spec f-old is in flight") }
	h.post("/requeue", form, nil)
	if _, body := h.get("/"); !strings.Contains(body, `class="flash error"`) || !strings.Contains(body, "in flight") {
		t.Errorf("a failed requeue is not shown as an error")
	}
	for _, path := range []string{"/cancel", "/pause", "/resume"} {
		if resp, _ := h.post(path, form, nil); resp.StatusCode != http.StatusSeeOther {
			t.Errorf("POST %s = %d, want 303", path, resp.StatusCode)
		}
	}
	if resp, _ := h.post("/requeue", url.Values{"csrf": {token}, "id": {"a/b"}}, nil); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("POST of a bad id = %d", resp.StatusCode)
	}
	if slices.Contains(h.admin.requeued, "a/b") {
		t.Errorf("a bad id reached admin")
	}
}

func TestActionsOffAreRefused(t *testing.T) {
	h := setup(t, queueFixture(), nil)
	for _, path := range []string{"/requeue", "/cancel", "/pause", "/resume"} {
		resp, body := h.post(path, url.Values{"id": {"f-old"}}, nil)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "--allow-actions") {
			t.Errorf("POST %s with actions off = %d %q", path, resp.StatusCode, body)
		}
	}
	if len(h.admin.requeued) != 0 {
		t.Errorf("requeued %v with actions off", h.admin.requeued)
	}
}

func TestTokenGuardsEverything(t *testing.T) {
	h := setup(t, queueFixture(), func(c *Config) { c.Token = "s3cret"; c.AllowActions = true })
	if code, _ := h.get("/"); code != http.StatusSeeOther {
		t.Fatalf("GET / without a session = %d, want a redirect to /login", code)
	}
	for _, p := range []string{"/live", "/spec?state=failed&id=f-old"} {
		if code, _ := h.get(p); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a session = %d, want 401", p, code)
		}
	}
	_, page := h.get("/login")
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)[1]
	if resp, _ := h.post("/login", url.Values{"csrf": {csrf}, "token": {"wrong"}}, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("login with a wrong token = %d", resp.StatusCode)
	}
	if resp, _ := h.post("/login", url.Values{"csrf": {csrf}, "token": {"s3cret"}}, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login = %d", resp.StatusCode)
	}
	for _, c := range h.client.Jar.Cookies(mustURL(h.srv.URL)) {
		if strings.Contains(c.Value, "s3cret") {
			t.Errorf("cookie %s holds the token", c.Name)
		}
	}
	if code, body := h.get("/"); code != http.StatusOK || !strings.Contains(body, "requeue</button>") {
		t.Errorf("GET / after login = %d", code)
	}
}

func TestLoopbackUIRefusesOtherHostNames(t *testing.T) {
	h := setup(t, queueFixture(), func(c *Config) { c.LoopbackHosts = true })
	if code, _ := h.get("/"); code != http.StatusOK {
		t.Fatalf("GET / by 127.0.0.1 = %d", code)
	}
	// A page of another site that rebinds its name to 127.0.0.1 sends its name.
	req, _ := http.NewRequest(http.MethodGet, h.srv.URL+"/", nil)
	req.Host = "rebind.example:8080"
	resp, err := h.client.Do(req)
	if err != nil || resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("GET / with Host rebind.example = %v, %v; want 421", resp.StatusCode, err)
	}
}

func TestCheckListen(t *testing.T) {
	for _, tt := range []struct {
		addr            string
		remote, actions bool
		token           string
		wantLoopback    bool
		wantErr         string
	}{
		{"127.0.0.1:8080", false, true, "", true, ""},
		{"localhost:0", false, false, "", true, ""},
		{"[::1]:8080", false, true, "", true, ""},
		{"127.0.0.2:8080", false, false, "", true, ""},
		{"0.0.0.0:8080", false, false, "", false, "not a loopback address"},
		{":8080", false, false, "", false, "not a loopback address"},
		{"10.0.0.5:8080", false, false, "", false, "--allow-remote"},
		{"ui.example:8080", false, false, "", false, "not a loopback address"},
		{"0.0.0.0:8080", true, false, "", false, ""},
		{"0.0.0.0:8080", true, true, "", false, "CELLOS_FLEET_UI_TOKEN"},
		{"0.0.0.0:8080", true, true, "t", false, ""},
		{"8080", false, false, "", false, "want HOST:PORT"},
	} {
		loopback, err := CheckListen(tt.addr, tt.remote, tt.actions, tt.token)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("CheckListen(%q, remote %v, actions %v, token %q) = %v, want error %q", tt.addr, tt.remote, tt.actions, tt.token, err, tt.wantErr)
		}
		if err == nil && loopback != tt.wantLoopback {
			t.Errorf("CheckListen(%q) loopback = %v", tt.addr, loopback)
		}
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
