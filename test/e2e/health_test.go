package e2e

// /metrics, /healthz and /readyz of a running agent: what they count and when
// the agent says it is ready (busy, idle, cut off from S3).

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/faultproxy"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestBusyNodeStaysReady: a node at capacity with a backlog keeps polling
// and stays ready. Each poll shows as fleetd_last_poll_success_timestamp_seconds
// advancing; /readyz answers 200 at every step over several poll intervals.
// Then every listing fails: with its last poll older than the 3 poll
// intervals readiness allows, the node is ready because every slot runs a
// cell, not because it polled (issue 9; readiness at capacity checked where
// only that rule can answer it).
func TestBusyNodeStaysReady(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	release := filepath.Join(t.TempDir(), "release")
	b.submit("long", map[string]any{"waitFor": release})
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_CONCURRENCY": "1", "CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0",
		"AWS_ENDPOINT_URL_S3": p.URL()})
	addr := metricsAddr(t, a)
	a.logs.awaitEvent(t, "cell.started", 1)
	for i := range 5 {
		b.submit(fmt.Sprintf("backlog-%d", i), map[string]any{})
	}
	const interval = 0.2 // CELLOS_FLEET_POLL_INTERVAL_MS of the harness, in seconds
	start := float64(time.Now().UnixNano()) / 1e9
	deadline := time.Now().Add(60 * time.Second)
	advances, last := 0, 0.0
	// Polling the metric is how an observer sees polls; each step checks
	// readiness, so a gap in polling long enough to fail it would show.
	for last < start+8*interval {
		if time.Now().After(deadline) {
			t.Fatalf("last poll %.3f, want past %.3f within 60s", last, start+8*interval)
		}
		if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
			t.Fatalf("/readyz = %d %q on a busy node", code, body)
		}
		if got := sample(t, scrape(t, addr), "fleetd_last_poll_success_timestamp_seconds"); got > last {
			if last > start {
				advances++
			}
			last = got
		}
		time.Sleep(20 * time.Millisecond)
	}
	if advances < 4 {
		t.Errorf("last poll advanced %d times over 8 poll intervals at capacity, want about one per interval", advances)
	}
	fams := scrape(t, addr)
	if got := sample(t, fams, "fleetd_cells_in_flight"); got != 1 {
		t.Errorf("cells in flight = %v, want 1: the node was not at capacity", got)
	}
	if got := len(b.ids("pending")); got != 5 {
		t.Errorf("pending/ holds %d specs, want the backlog of 5", got)
	}

	// No listing succeeds now; the cell runs on (its session's renewals are
	// PUTs). Once the last poll is older than readiness allows, /readyz must
	// still answer 200, over several more poll intervals.
	lists := p.Add(faultproxy.Rule{Method: "GET", Query: "list-type=2", Action: faultproxy.ErrorBefore, Status: 503})
	awaitFired(t, lists, 1)
	staleChecks := 0
	deadline = time.Now().Add(60 * time.Second)
	for staleChecks < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d readiness checks with a stale last poll within 60s", staleChecks)
		}
		fams := scrape(t, addr)
		lastPoll := sample(t, fams, "fleetd_last_poll_success_timestamp_seconds")
		stale := float64(time.Now().UnixNano())/1e9-lastPoll > 3*interval+0.1
		code, body := httpGet(t, "http://"+addr+"/readyz")
		if stale {
			staleChecks++
			if code != 200 {
				t.Fatalf("/readyz = %d %q at capacity with the last poll %.1fs old, want 200", code, body, float64(time.Now().UnixNano())/1e9-lastPoll)
			}
		}
		if got := sample(t, fams, "fleetd_cells_in_flight"); got != 1 {
			t.Fatalf("cells in flight = %v while listings fail, want 1", got)
		}
		time.Sleep(100 * time.Millisecond) // half a poll interval
	}
	lists.Remove()

	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b.waitCount("completed", 6)
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// metricsAddr reads the address fleetd says it serves metrics on.
func metricsAddr(t *testing.T, a *agent) string {
	t.Helper()
	a.logs.awaitEvent(t, "ops.serving", 1)
	return a.logs.events("ops.serving")[0]["addr"].(string)
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// scrape parses /metrics with the Prometheus text parser.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return families
}

// sample returns the value of family name whose labels include want.
func sample(t *testing.T, fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s missing", name)
	}
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(want); i += 2 {
			match = match && labels[want[i]] == want[i+1]
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("metric %s%v missing", name, want)
	return 0
}

// TestMetricsCountAndProbesFollowTheAgent: /metrics counts every outcome,
// start, skip and S3 request of a run; /readyz answers 200 while working and
// 503 while draining, /healthz 200 throughout. Was TestMetricsAndHealth.
func TestMetricsCountAndProbesFollowTheAgent(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	release := filepath.Join(t.TempDir(), "release")
	for i := range 10 {
		b.submit(fmt.Sprintf("ok-%d", i), map[string]any{})
	}
	for i := range 3 {
		b.submit(fmt.Sprintf("bad-%d", i), map[string]any{"exit": 1})
	}
	b.submit("long", map[string]any{"waitFor": release})
	b.submit("other-pool", map[string]any{}, pool("gpu"))
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_CONCURRENCY": "4", "CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0", "CELLOS_FLEET_POOL_ID": "cpu"})
	addr := metricsAddr(t, a)
	a.logs.awaitEvent(t, "spec.finished", 13)

	fams := scrape(t, addr)
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"fleetd_cells_finished_total", []string{"outcome", "completed"}, 10},
		{"fleetd_cells_finished_total", []string{"outcome", "failed"}, 3},
		{"fleetd_cells_finished_total", []string{"outcome", "rejected"}, 0},
		{"fleetd_cells_started_total", nil, 14},
		{"fleetd_cells_in_flight", nil, 1},
		{"fleetd_concurrency", nil, 4},
		{"fleetd_gate_skips_total", nil, 1},
		{"fleetd_cell_duration_seconds", nil, 13},
		{"fleetd_build_info", []string{"version", env.version}, 1},
	}
	for _, c := range checks {
		if got := sample(t, fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := sample(t, fams, "fleetd_s3_requests_total", "operation", "PutObject", "code", "200"); got < 13*3 {
		t.Errorf("PutObject 200s = %v, want at least 3 per finished spec (lease, claimed, result)", got)
	}
	if sample(t, fams, "fleetd_last_poll_success_timestamp_seconds") == 0 {
		t.Error("no successful poll recorded")
	}
	if code, _ := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d while working, want 200", code)
	}

	a.signal(syscall.SIGTERM)
	a.logs.awaitEvent(t, "drain.started", 1)
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("/readyz = %d %q while draining, want 503 draining", code, body)
	}
	if code, _ := httpGet(t, "http://"+addr+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d while draining, want 200", code)
	}
	fams = scrape(t, addr)
	if got := sample(t, fams, "fleetd_cells_in_flight"); got != 1 {
		t.Errorf("in flight during drain = %v, want 1", got)
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

func TestReadyzWhenS3Unreachable(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	a := startAgent(t, b, map[string]string{"AWS_ENDPOINT_URL_S3": dead, "CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0"})
	addr := metricsAddr(t, a)
	a.logs.awaitEvent(t, "selftest.retry", 1)
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 503 || !strings.Contains(body, "no successful poll") {
		t.Errorf("/readyz = %d %q with S3 unreachable, want 503", code, body)
	}
	if code, _ := httpGet(t, "http://"+addr+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d, want 200", code)
	}
	fams := scrape(t, addr)
	if got := sample(t, fams, "fleetd_s3_errors_total", "operation", "PutObject", "code", "none"); got < 1 {
		t.Errorf("S3 errors without a response = %v, want > 0", got)
	}
	a.signal(syscall.SIGTERM)
	a.wait()
}

// TestBusyAgentIsReadyAndLive: with its one slot running a long cell and
// another spec pending, an agent keeps listing once a poll interval (a
// fetched page is a successful poll) and is ready and live.
func TestBusyAgentIsReadyAndLive(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	release := filepath.Join(t.TempDir(), "release")
	b.submit("long", map[string]any{"waitFor": release})
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_CONCURRENCY": "1", "CELLOS_FLEET_POLL_INTERVAL_MS": "100",
		"CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0"})
	addr := metricsAddr(t, a)
	a.logs.awaitEvent(t, "cell.started", 1)
	b.submit("next", map[string]any{})
	lastPoll := func() float64 {
		return sample(t, scrape(t, addr), "fleetd_last_poll_success_timestamp_seconds")
	}
	// Busy for over 3 poll intervals, the lister still records fresh polls.
	busySince := float64(time.Now().UnixNano()) / 1e9
	deadline := time.Now().Add(30 * time.Second)
	for lastPoll() < busySince+0.5 {
		if time.Now().After(deadline) {
			t.Fatal("no successful poll while the only slot was busy")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q on a busy agent, want 200", code, body)
	}
	if code, body := httpGet(t, "http://"+addr+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d %q on a busy agent, want 200", code, body)
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a.logs.awaitEvent(t, "spec.finished", 2)
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q once idle, want 200", code, body)
	}
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
