package main

// The rig: one versitygw, a counting proxy in front of it, and fleetd
// processes pointed at the proxy.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/cellos/fleetd/internal/localstore"
	"github.com/cellos/fleetd/internal/natsserver"
	"github.com/cellos/fleetd/internal/store"
	"github.com/cellos/fleetd/internal/versitygw"
)

type rig struct {
	dir    string
	server *localstore.Server
	mode   store.DeleteMode // the store's, for the raw runs
	// On versitygw (the notify scenario's store): nats carries the bucket
	// events the server publishes; quiet serves the same directory and
	// publishes nothing, a store that dropped the event.
	nats       *natsserver.Server
	subject    string        // where server publishes the bucket events
	netPoll    time.Duration // the safety-net poll of agents with notifications
	quiet      *versitygw.Server
	proxyURL   string
	counts     *counter
	fleetd     string
	supervisor string // the scriptable test supervisor
	direct     *s3.Client
	proxied    *s3.Client
	buckets    atomic.Int64
	delay      atomic.Int64 // added to every proxied request, ns
	closeProxy func()
}

// counter counts the requests that pass the proxy: in all, by answer, and by
// operation and area, which is what S3 bills and what tells a recovery LIST
// from a poll.
type counter struct {
	total, preconditionFailed, notFound atomic.Int64

	mu      sync.Mutex
	byOp    map[opArea]int64
	tracing bool
	trace   []traced // with tracing on: every request on a spec's own keys
}

// opArea is an S3 operation (GET, PUT, COPY, HEAD, DELETE, LIST) and the
// queue directory it touched: "pending" for pending/<id>.json, or the
// listing's prefix ("leases" for a LIST of fleet/leases/).
type opArea struct{ Op, Area string }

// traced is one request on a spec's key, timed at the proxy.
type traced struct {
	op, area, id string
	start, end   time.Time
}

func (c *counter) reset() {
	c.total.Store(0)
	c.preconditionFailed.Store(0)
	c.notFound.Store(0)
	c.mu.Lock()
	c.byOp = map[opArea]int64{}
	c.trace = nil
	c.mu.Unlock()
}

// ops returns a copy of the counts by operation and area.
func (c *counter) ops() map[opArea]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[opArea]int64, len(c.byOp))
	for k, v := range c.byOp {
		m[k] = v
	}
	return m
}

// setTracing turns the per-request trace on or off (and clears it).
func (c *counter) setTracing(on bool) {
	c.mu.Lock()
	c.tracing, c.trace = on, nil
	c.mu.Unlock()
}

func (c *counter) traced() []traced {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.trace)
}

// classify names a path-style request's operation, area and spec id.
func classify(req *http.Request) (op, area, id string) {
	// /bucket/fleet/<area>/<id>.json, or /bucket?list-type=2&prefix=fleet/<area>/
	parts := strings.SplitN(strings.TrimPrefix(req.URL.Path, "/"), "/", 2)
	key := ""
	if len(parts) == 2 {
		key = parts[1]
	}
	op = req.Method
	q := req.URL.Query()
	switch {
	case key == "" && req.Method == http.MethodGet && q.Has("versions"):
		// ListObjectVersions of one key (a versioned delete): its area.
		dir, _ := path.Split(q.Get("prefix"))
		return "LISTV", path.Base(dir), ""
	case key == "" && req.Method == http.MethodPost && q.Has("delete"):
		return "DELETEV", "batch", "" // DeleteObjects: the keys are in the body
	case key == "" && req.Method == http.MethodGet:
		op, key = "LIST", q.Get("prefix")
	case req.Method == http.MethodPut && req.Header.Get("X-Amz-Copy-Source") != "":
		op = "COPY"
	}
	dir, name := path.Split(strings.TrimSuffix(key, "/"))
	if op == "LIST" {
		return op, name, ""
	}
	return op, path.Base(dir), strings.TrimSuffix(name, ".json")
}

// repoRoot is the daemon's module root: the first directory at or above the
// working directory that holds cmd/fleetd.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if st, err := os.Stat(filepath.Join(dir, "cmd", "fleetd")); err == nil && st.IsDir() {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("bench: no cmd/fleetd at or above the working directory")
		}
		dir = parent
	}
}

// newRig starts the server (a localstore kind) and the proxy; fleetd, if not
// empty, is the binary to measure instead of one built from ./cmd/fleetd.
func newRig(dir, fleetd, kind string) (*rig, error) {
	r := &rig{dir: dir, counts: &counter{byOp: map[opArea]int64{}}, mode: store.IfMatchDeletes}
	if kind == "minio" {
		r.mode = store.VersionedDeletes
	}
	data := filepath.Join(dir, "s3")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	var err error
	if kind == "minio" {
		r.server, err = localstore.Start(kind, data)
	} else {
		err = r.startPublishing(data)
	}
	if err != nil {
		r.close()
		return nil, err
	}
	root, err := repoRoot()
	if err != nil {
		r.close()
		return nil, err
	}
	for out, pkg := range map[string]string{"fleetd": "./cmd/fleetd", "testsupervisor": "./internal/testsupervisor"} {
		path := filepath.Join(dir, out)
		build := exec.Command("go", "build", "-o", path, pkg)
		build.Dir = root // the daemon's module, not the bench's
		if b, err := build.CombinedOutput(); err != nil {
			r.close()
			return nil, fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	r.fleetd, r.supervisor = filepath.Join(dir, "fleetd"), filepath.Join(dir, "testsupervisor")
	if fleetd != "" {
		r.fleetd = fleetd
	}

	target, _ := url.Parse(r.server.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{MaxIdleConnsPerHost: 1024}
	// A drained fleetd cancels its idle listing; that is not worth a line.
	proxy.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.close()
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		start := time.Now()
		r.counts.total.Add(1)
		op, area, id := classify(req)
		// The delay stands for a store farther away than loopback: every
		// request pays it once, before the server sees it.
		if d := time.Duration(r.delay.Load()); d > 0 {
			time.Sleep(d)
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		proxy.ServeHTTP(sw, req)
		c := r.counts
		// The self-test's refusals are by design, not conflicts over work.
		switch {
		case area == "selftest":
		case sw.code == http.StatusPreconditionFailed:
			c.preconditionFailed.Add(1)
		case sw.code == http.StatusNotFound:
			c.notFound.Add(1)
		}
		c.mu.Lock()
		c.byOp[opArea{op, area}]++
		if c.tracing && id != "" {
			c.trace = append(c.trace, traced{op: op, area: area, id: id, start: start, end: time.Now()})
		}
		c.mu.Unlock()
	})}
	go func() { _ = srv.Serve(ln) }()
	r.closeProxy = func() { _ = srv.Close() }
	r.proxyURL = "http://" + ln.Addr().String()
	r.direct = r.client(r.server.URL)
	r.proxied = r.client(r.proxyURL)
	return r, nil
}

// statusWriter remembers the status of the answer it passes on.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func (r *rig) client(endpoint string) *s3.Client {
	return s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(r.server.AccessKey, r.server.SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		HTTPClient:                 &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}},
	})
}

func (r *rig) close() {
	if r.closeProxy != nil {
		r.closeProxy()
	}
	if r.server != nil {
		r.server.Stop()
	}
	if r.quiet != nil {
		r.quiet.Stop()
	}
	if r.nats != nil {
		r.nats.Stop()
	}
}

// startPublishing starts nats-server and a versitygw over data that
// publishes every write's event to it, and a quiet one beside it.
func (r *rig) startPublishing(data string) error {
	bin, err := versitygw.Binary()
	if err != nil {
		return err
	}
	nbin, err := natsserver.Binary()
	if err != nil {
		return err
	}
	if r.nats, err = natsserver.Start(nbin, filepath.Join(r.dir, "nats")); err != nil {
		return err
	}
	r.subject = "bench.s3.events"
	vgw, err := versitygw.StartWith(bin, data, versitygw.Options{NATSURL: r.nats.URL, NATSSubject: r.subject})
	if err != nil {
		return err
	}
	r.server = localstore.FromVersitygw(vgw)
	r.quiet, err = versitygw.StartWith(bin, data, versitygw.Options{AccessKey: vgw.AccessKey, SecretKey: vgw.SecretKey})
	return err
}

func (r *rig) newBucket() (string, error) {
	name := fmt.Sprintf("bench-%d", r.buckets.Add(1))
	return name, r.server.CreateBucket(context.Background(), r.direct, name)
}

// noopSpec is the body of a no-op spec: about the size of a small real one.
func noopSpec(id string, test string) []byte {
	if test == "" {
		test = "{}"
	}
	return []byte(fmt.Sprintf(`{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":%q,"image":"registry.example/cells/noop:1","resources":{"cpu":"1","memory":"512Mi"},"test":%s}}`, id, test))
}

// submit puts n specs into pending/ directly (not through the proxy).
func (r *rig) submit(bucket string, n int, test string) error {
	storage := store.New(r.direct, bucket, store.Policy{})
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("spec-%06d", i)
			if _, err := storage.Put(context.Background(), "fleet/pending/"+id+".json", noopSpec(id, test), store.PutOptions{}); err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return nil
}

// agent is one fleetd process under measurement.
type agent struct {
	cmd       *exec.Cmd
	started   time.Time
	finished  atomic.Int64
	connected atomic.Int64   // notify.connected lines
	lost      atomic.Int64   // notify.lost lines
	hinted    atomic.Int64   // lister.hinted lines (log level debug only)
	settled   atomic.Int64   // lister.listed lines at the safety-net poll (debug only)
	cellStart chan time.Time // one per "cell started" line, if asked for
	exited    chan struct{}
	stderr    bytes.Buffer // last lines, for errors
	cells     map[string]*cellTimes
	ready     time.Time // when its self-test passed, by its log
	mu        sync.Mutex
}

// readyAt is when the agent could start work: its self-test passed. Runs are
// timed from there, as the raw runs they are compared with start ready; an
// agent's start-up (the process, the self-test) is paid once in its life.
// A build that does not log it is timed from its start.
func (a *agent) readyAt() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ready.IsZero() {
		return a.started
	}
	return a.ready
}

// cellTimes is when fleetd logged a spec's cell start and end (the log's own
// timestamps, so the pipe's delay does not count).
type cellTimes struct{ started, ended time.Time }

// cellLog returns a copy of the cell times seen so far, by spec id.
func (a *agent) cellLog() map[string]cellTimes {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := make(map[string]cellTimes, len(a.cells))
	for id, t := range a.cells {
		m[id] = *t
	}
	return m
}

func (a *agent) noteCell(line string) {
	var ev struct {
		Time   time.Time `json:"time"`
		Event  string    `json:"event"`
		SpecID string    `json:"spec_id"`
	}
	if json.Unmarshal([]byte(line), &ev) != nil || ev.SpecID == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.cells[ev.SpecID]
	if t == nil {
		t = &cellTimes{}
		a.cells[ev.SpecID] = t
	}
	if ev.Event == "cell.started" {
		t.started = ev.Time
	} else {
		t.ended = ev.Time
	}
}

// startAgent runs fleetd on bucket through the proxy with extra settings.
func (r *rig) startAgent(bucket string, settings map[string]string, watchStarts bool) (*agent, error) {
	a := &agent{exited: make(chan struct{}), cells: map[string]*cellTimes{}}
	if watchStarts {
		a.cellStart = make(chan time.Time, 1<<16)
	}
	a.cmd = exec.Command(r.fleetd)
	a.cmd.Env = append(os.Environ(),
		"AWS_ACCESS_KEY_ID="+r.server.AccessKey, "AWS_SECRET_ACCESS_KEY="+r.server.SecretKey,
		"AWS_REGION=us-east-1", "AWS_ENDPOINT_URL_S3="+r.proxyURL,
		"CELLOS_FLEET_BUCKET="+bucket, "CELLOS_FLEET_SUPERVISOR=/bin/true",
		"CELLOS_FLEET_HEARTBEAT_INTERVAL_MS=3600000",
	)
	for k, v := range settings {
		a.cmd.Env = append(a.cmd.Env, k+"="+v)
	}
	a.cmd.Stdout = io.Discard
	pipe, err := a.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	a.started = time.Now()
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(a.exited)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			line := sc.Text()
			var rec struct {
				Event string `json:"event"`
				Level string `json:"level"`
			}
			// fleetd's log lines are JSON; the event names them, not the msg.
			if json.Unmarshal([]byte(line), &rec) != nil {
				continue
			}
			switch {
			case rec.Event == "spec.finished":
				a.finished.Add(1)
			case rec.Event == "notify.connected":
				a.connected.Add(1)
			case rec.Event == "notify.lost":
				a.lost.Add(1)
			case rec.Event == "lister.hinted":
				a.hinted.Add(1)
			case rec.Event == "lister.listed":
				var ev struct {
					PollMs int64 `json:"poll_ms"`
				}
				if json.Unmarshal([]byte(line), &ev) == nil && r.netPoll > 0 && ev.PollMs >= r.netPoll.Milliseconds() {
					a.settled.Add(1)
				}
			case rec.Event == "cell.started":
				a.noteCell(line)
				if a.cellStart != nil {
					a.cellStart <- time.Now()
				}
			case rec.Event == "cell.ended":
				a.noteCell(line)
			case rec.Event == "selftest.passed":
				var ev struct {
					Time time.Time `json:"time"`
				}
				if json.Unmarshal([]byte(line), &ev) == nil {
					a.mu.Lock()
					a.ready = ev.Time
					a.mu.Unlock()
				}
			case rec.Level == "ERROR":
				a.mu.Lock()
				a.stderr.WriteString(line + "\n")
				a.mu.Unlock()
			}
		}
		_ = a.cmd.Wait()
	}()
	return a, nil
}

// waitFinished waits until the agents together finished n specs.
func waitFinished(timeout time.Duration, n int64, agents ...*agent) error {
	deadline := time.Now().Add(timeout)
	for {
		var got int64
		for _, a := range agents {
			got += a.finished.Load()
		}
		if got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d specs finished within %v", got, n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop drains the agent and returns fleetd's own CPU time and peak RSS, read
// from /proc before it exits (its cells' usage is not included).
func (a *agent) stop() (procStats, error) {
	st, err := readProc(a.cmd.Process.Pid)
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	<-a.exited
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stderr.Len() > 0 {
		fmt.Fprintf(os.Stderr, "fleetd logged errors:\n%s", a.stderr.String())
	}
	return st, err
}

// kill ends the agent with SIGKILL, as a host that dies: no drain, no
// cleanup, its leases left to go stale.
func (a *agent) kill() {
	_ = a.cmd.Process.Kill()
	<-a.exited
}

type procStats struct {
	cpu     time.Duration
	rss     int64 // bytes now
	peakRSS int64 // bytes, high-water mark
}

// readProc reads a process's CPU time (user+system) and RSS from /proc.
func readProc(pid int) (procStats, error) {
	var st procStats
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	st.cpu = time.Duration(utime+stime) * time.Second / 100 // USER_HZ
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(line, "VmHWM: %d kB", &kb); err == nil {
			st.peakRSS = kb * 1024
		}
		if _, err := fmt.Sscanf(line, "VmRSS: %d kB", &kb); err == nil {
			st.rss = kb * 1024
		}
	}
	return st, nil
}

// selfCPU is the harness's own CPU time so far: the counting proxy, mostly.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineMeter measures all cores' use between its start and stop from
// /proc/stat: whether the machine, not fleetd or the server alone, set the
// pace, and what the whole job cost it.
type machineMeter struct{ busy, total int64 }

func startMachineMeter() (machineMeter, error) {
	busy, total, err := machineCPU()
	return machineMeter{busy, total}, err
}

// stop returns the share of the cores' time busy since start, and the busy
// time in all.
func (m machineMeter) stop() (share float64, busy time.Duration, err error) {
	b, t, err := machineCPU()
	if err != nil || t == m.total {
		return 0, 0, err
	}
	return float64(b-m.busy) / float64(t-m.total), time.Duration(b-m.busy) * time.Second / 100, nil // USER_HZ
}

// machineCPU reads the busy and total time of all cores, in clock ticks.
func machineCPU() (busy, total int64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, s := range f[1:9] {
		var v int64
		if _, err := fmt.Sscan(s, &v); err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, nil
}
