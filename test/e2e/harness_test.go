package e2e

// The integration harness: one versitygw per package run, a bucket per test,
// the real fleetd binary and the test supervisor as child processes.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/cellos/fleetd/internal/localstore"
	"github.com/cellos/fleetd/internal/toolbin"
)

// env is what TestMain set up for every test in the package.
var env struct {
	// store is FLEETD_TEST_STORE: versitygw (the default) or minio, on
	// which buckets have versioning enabled (make test runs the claim,
	// recovery, operator and fault tests on both).
	store      string
	server     *localstore.Server
	fleetd     string // binary
	version    string // the binary's, as `fleetd version` prints it
	supervisor string // test supervisor binary
	client     *s3.Client
	// missing, when set, is why no store could be started: every test that
	// needs one skips with it (outside CI only: toolbin.MaySkip).
	missing string
}

// needStore skips a test when the store is not installed here.
func needStore(t *testing.T) {
	t.Helper()
	if env.missing != "" {
		t.Skipf("no %s here: %s", env.store, env.missing)
	}
}

// onlyOn skips a test on every store but kind: one that depends on how that
// store answers (its requests, its backend on disk).
func onlyOn(t *testing.T, kind, why string) {
	t.Helper()
	needStore(t)
	if env.store != kind {
		t.Skipf("on %s only: %s", kind, why)
	}
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	env.store = cmp.Or(os.Getenv("FLEETD_TEST_STORE"), "versitygw")
	if _, err := localstore.Binary(env.store); err != nil {
		if !toolbin.MaySkip(err) {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		env.missing = err.Error()
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "fleetd-it-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	env.fleetd = filepath.Join(tmp, "fleetd")
	env.supervisor = filepath.Join(tmp, "testsupervisor")
	for out, pkg := range map[string]string{env.fleetd: "../../cmd/fleetd", env.supervisor: "../../internal/testsupervisor"} {
		args := []string{"build", "-o", out}
		if out == env.fleetd && raceEnabled {
			args = append(args, "-race")
		}
		if b, err := exec.Command("go", append(args, pkg)...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	out, err := exec.Command(env.fleetd, "version").Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleetd version: %v\n", err)
		return 1
	}
	// "fleetd 0.6.0 (abc1234)"
	if f := strings.Fields(string(out)); len(f) == 3 && f[0] == "fleetd" {
		env.version = f[1]
	} else {
		fmt.Fprintf(os.Stderr, "fleetd version printed %q\n", out)
		return 1
	}
	data := filepath.Join(tmp, "s3")
	if err := os.Mkdir(data, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env.server, err = localstore.Start(env.store, data)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.server.Stop()
	env.client = env.server.Client()
	return m.Run()
}

var bucketSeq atomic.Int64

// bucket is one test's queue.
type bucket struct {
	t    *testing.T
	name string
	base string // prefix[/queue]
}

func newBucket(t *testing.T) *bucket {
	t.Helper()
	needStore(t)
	name := fmt.Sprintf("it-%d-%d", os.Getpid(), bucketSeq.Add(1))
	// On MinIO, with versioning on (a plain bucket is refused:
	// TestStorePlainMinIORefused).
	if err := env.server.CreateBucket(context.Background(), env.client, name); err != nil {
		t.Fatal(err)
	}
	return &bucket{t: t, name: name, base: "fleet"}
}

func (b *bucket) key(state, id string) string { return b.base + "/" + state + "/" + id + ".json" }

func (b *bucket) putRaw(key string, body []byte) {
	b.t.Helper()
	_, err := env.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &b.name, Key: &key, Body: bytes.NewReader(body)})
	if err != nil {
		b.t.Fatalf("put %s: %v", key, err)
	}
}

// submit puts a spec in pending/ and returns its bytes.
func (b *bucket) submit(id string, test map[string]any, extra ...func(spec map[string]any)) []byte {
	b.t.Helper()
	spec := map[string]any{"id": id, "test": test}
	for _, f := range extra {
		f(spec)
	}
	body, _ := json.Marshal(map[string]any{"apiVersion": "cellos/v1", "kind": "ExecutionCell", "spec": spec})
	b.putRaw(b.key("pending", id), body)
	return body
}

func pool(id string) func(map[string]any) {
	return func(spec map[string]any) { spec["placement"] = map[string]any{"poolId": id} }
}

// ids lists the spec ids in a state.
func (b *bucket) ids(state string) []string {
	b.t.Helper()
	var ids []string
	for _, k := range b.keys(b.base + "/" + state + "/") {
		ids = append(ids, strings.TrimSuffix(strings.TrimPrefix(k, b.base+"/"+state+"/"), ".json"))
	}
	return ids
}

func (b *bucket) keys(prefix string) []string {
	b.t.Helper()
	var keys []string
	p := s3.NewListObjectsV2Paginator(env.client, &s3.ListObjectsV2Input{Bucket: &b.name, Prefix: &prefix})
	for p.HasMorePages() {
		out, err := p.NextPage(context.Background())
		if err != nil {
			b.t.Fatalf("list %s: %v", prefix, err)
		}
		for _, o := range out.Contents {
			keys = append(keys, *o.Key)
		}
	}
	slices.Sort(keys)
	return keys
}

func (b *bucket) get(key string) ([]byte, map[string]string) {
	b.t.Helper()
	out, err := env.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: &b.name, Key: &key})
	if err != nil {
		b.t.Fatalf("get %s: %v", key, err)
	}
	defer out.Body.Close()
	body, err := io.ReadAll(out.Body)
	if err != nil {
		b.t.Fatalf("read %s: %v", key, err)
	}
	return body, out.Metadata
}

func (b *bucket) exists(key string) bool {
	_, err := env.client.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: &b.name, Key: &key})
	var nf *types.NotFound
	if errors.As(err, &nf) {
		return false
	}
	if err != nil {
		b.t.Fatalf("head %s: %v", key, err)
	}
	return true
}

// waitCount waits until state holds n specs. Polling the bucket is the only
// way to observe it; the bound is generous for a loaded CI machine.
func (b *bucket) waitCount(state string, n int) {
	b.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		got := len(b.ids(state))
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s/ holds %d specs after 90s, want %d", state, got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// agent is one fleetd process.
type agent struct {
	t      *testing.T
	cmd    *exec.Cmd
	events string // the test supervisor's event file
	logs   *logWatch
	stdout *logWatch
	exited chan struct{}
	code   int
}

// startAgent runs fleetd on bucket b. settings are CELLOS_FLEET_* variables
// (or any others) over the test defaults.
func startAgent(t *testing.T, b *bucket, settings map[string]string) *agent {
	t.Helper()
	dir := t.TempDir()
	vars := map[string]string{
		"CELLOS_FLEET_BUCKET":           b.name,
		"CELLOS_FLEET_SUPERVISOR":       env.supervisor,
		"CELLOS_FLEET_POLL_INTERVAL_MS": "200",
		"CELLOS_FLEET_LOG_LEVEL":        "debug",
		"FLEETD_TEST_EVENTS":            filepath.Join(dir, "events"),
		"TMPDIR":                        dir,
	}
	for k, v := range settings {
		vars[k] = v
	}
	a := &agent{t: t, events: vars["FLEETD_TEST_EVENTS"], logs: newLogWatch(), stdout: newLogWatch(), exited: make(chan struct{})}
	a.cmd = exec.Command(env.fleetd)
	a.cmd.Env = append(os.Environ(), env.server.Env()...)
	for k, v := range vars {
		a.cmd.Env = append(a.cmd.Env, k+"="+v)
	}
	a.cmd.Stderr = a.logs
	a.cmd.Stdout = a.stdout
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start fleetd: %v", err)
	}
	go func() {
		_ = a.cmd.Wait()
		a.code = a.cmd.ProcessState.ExitCode()
		a.logs.close()
		a.stdout.close()
		close(a.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-a.exited:
		default:
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
		// Cells a killed fleetd left running belong to the test too.
		for _, e := range readEvents(t, a.events) {
			if e.what == "start" {
				_ = syscall.Kill(e.pid, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			t.Logf("fleetd log:\n%s", a.logs.text())
		}
	})
	if settings["CELLOS_FLEET_LOG_FORMAT"] == "text" {
		// Text lines are not JSON; the event is still a key=value attribute.
		a.logs.await(t, " event=agent.starting ", 1)
	} else {
		a.logs.awaitEvent(t, "agent.starting", 1)
	}
	return a
}

// signal sends sig to fleetd.
func (a *agent) signal(sig syscall.Signal) {
	a.t.Helper()
	if err := a.cmd.Process.Signal(sig); err != nil {
		a.t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait waits for fleetd to exit and returns its exit code.
func (a *agent) wait() int {
	a.t.Helper()
	select {
	case <-a.exited:
		return a.code
	case <-time.After(90 * time.Second):
		a.t.Fatalf("fleetd did not exit within 90s")
		return -1
	}
}

// cellEvent is one line the test supervisor wrote.
type cellEvent struct {
	what, id string
	at       int64
	pid      int
	path     string
	mode     string
}

func (a *agent) cellEvents() []cellEvent {
	a.t.Helper()
	return readEvents(a.t, a.events)
}

func readEvents(t *testing.T, path string) []cellEvent {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var evs []cellEvent
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 {
			continue
		}
		at, _ := strconv.ParseInt(f[2], 10, 64)
		pid, _ := strconv.Atoi(f[3])
		evs = append(evs, cellEvent{what: f[0], id: f[1], at: at, pid: pid, path: f[4], mode: f[5]})
	}
	return evs
}

// starts counts cell starts per spec id.
func starts(evs []cellEvent) map[string]int {
	n := map[string]int{}
	for _, e := range evs {
		if e.what == "start" {
			n[e.id]++
		}
	}
	return n
}

// logWatch collects a process's output lines and lets a test await one.
type logWatch struct {
	mu      sync.Mutex
	buf     []byte
	lines   []string
	changed chan struct{}
	closed  bool
}

func newLogWatch() *logWatch { return &logWatch{changed: make(chan struct{})} }

func (w *logWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.lines = append(w.lines, string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	close(w.changed)
	w.changed = make(chan struct{})
	return len(p), nil
}

func (w *logWatch) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *logWatch) text() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.lines, "\n") + string(w.buf)
}

// count returns the number of lines containing substr.
func (w *logWatch) count(substr string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, l := range w.lines {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// await blocks until n lines contain substr.
func (w *logWatch) await(t *testing.T, substr string, n int) {
	t.Helper()
	timeout := time.After(90 * time.Second)
	for {
		w.mu.Lock()
		changed, closed := w.changed, w.closed
		w.mu.Unlock()
		if w.count(substr) >= n {
			return
		}
		if closed {
			t.Fatalf("process exited before %d lines with %q", n, substr)
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("no %d lines with %q within 90s", n, substr)
		}
	}
}

// eventOf is the event attribute of a JSON log line, or "" for a line that
// is not JSON or has none.
func eventOf(line string) string {
	var rec struct {
		Event string `json:"event"`
	}
	if json.Unmarshal([]byte(line), &rec) != nil {
		return ""
	}
	return rec.Event
}

// countEvent returns the number of JSON log lines whose event is name.
// Lines that are not JSON are skipped.
func (w *logWatch) countEvent(name string) int {
	return w.countEvents(name)
}

// countEvents returns the number of JSON log lines whose event is any of names.
func (w *logWatch) countEvents(names ...string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, l := range w.lines {
		ev := eventOf(l)
		for _, name := range names {
			if ev != "" && ev == name {
				n++
				break
			}
		}
	}
	return n
}

// awaitEvent blocks until n JSON log lines have the event name.
func (w *logWatch) awaitEvent(t *testing.T, name string, n int) {
	t.Helper()
	w.awaitEvents(t, n, name)
}

// awaitEvents blocks until n JSON log lines have any of the event names.
func (w *logWatch) awaitEvents(t *testing.T, n int, names ...string) {
	t.Helper()
	name := strings.Join(names, "|")
	timeout := time.After(90 * time.Second)
	for {
		w.mu.Lock()
		changed, closed := w.changed, w.closed
		w.mu.Unlock()
		if w.countEvents(names...) >= n {
			return
		}
		if closed {
			t.Fatalf("process exited before %d %q events", n, name)
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("no %d %q events within 90s", n, name)
		}
	}
}

// events parses the JSON log lines whose event is name, in order.
func (w *logWatch) events(name string) []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []map[string]any
	for _, l := range w.lines {
		if eventOf(l) != name {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// eventsWith parses the JSON log lines whose event is name and whose field
// holds value.
func (w *logWatch) eventsWith(name, field string, value any) []map[string]any {
	var out []map[string]any
	for _, m := range w.events(name) {
		if m[field] == value {
			out = append(out, m)
		}
	}
	return out
}

// jsonLines parses the JSON log lines that contain substr.
func (w *logWatch) jsonLines(t *testing.T, substr string) []map[string]any {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []map[string]any
	for _, l := range w.lines {
		if !strings.Contains(l, substr) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		out = append(out, m)
	}
	return out
}
