package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/cellos/fleetd/internal/admin"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

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

func TestMetricsAndHealth(t *testing.T) {
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
	a.logs.awaitEvent(t, "spec.finalised", 13)

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

// runCLI runs a fleetd subcommand against bucket b.
func runCLI(t *testing.T, b *bucket, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLIEnv(t, b, nil, args...)
}

// runCLIEnv is runCLI with extra environment variables, which win over the
// defaults (AWS_ENDPOINT_URL_S3 to go through a fault proxy, say).
func runCLIEnv(t *testing.T, b *bucket, vars map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLIWith(t, b, vars, "", args...)
}

// runCLIStdin is runCLI with stdin as the command's standard input.
func runCLIStdin(t *testing.T, b *bucket, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLIWith(t, b, nil, stdin, args...)
}

func runCLIWith(t *testing.T, b *bucket, vars map[string]string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(env.fleetd, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), env.server.Env()...)
	cmd.Env = append(cmd.Env, "CELLOS_FLEET_BUCKET="+b.name)
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run fleetd %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSubmit(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	good := writeFile(t, "job.json", `{"kind":"ExecutionCell","spec":{"id":"from-spec"}}`)
	noID := writeFile(t, "named-by-file.json", `{"kind":"ExecutionCell","spec":{}}`)
	if code, out, errOut := runCLI(t, b, "submit", good, noID); code != 0 || !strings.Contains(out, "submitted from-spec") {
		t.Fatalf("submit = %d %q %q", code, out, errOut)
	}
	if got := b.ids("pending"); !slices.Equal(got, []string{"from-spec", "named-by-file"}) {
		t.Errorf("pending = %v", got)
	}
	if body, _ := b.get(b.key("pending", "from-spec")); string(body) != `{"kind":"ExecutionCell","spec":{"id":"from-spec"}}` {
		t.Errorf("uploaded bytes changed: %s", body)
	}
	if code, _, _ := runCLI(t, b, "submit", good, "--id", "chosen"); code != 0 || !b.exists(b.key("pending", "chosen")) {
		t.Errorf("submit --id = %d", code)
	}
	if code, _, errOut := runCLI(t, b, "submit", good); code != 1 || !strings.Contains(errOut, "already in pending/") {
		t.Errorf("duplicate submit = %d %q, want 1 and a refusal", code, errOut)
	}
	if code, _, errOut := runCLI(t, b, "submit", "--replace", good); code != 0 {
		t.Errorf("submit --replace = %d %q", code, errOut)
	}

	before := b.keys("")
	bad := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"submit", filepath.Join(t.TempDir(), "missing.json")}, 1, "no such file"},
		{[]string{"submit", writeFile(t, "x.json", `{"spec":`)}, 1, "not JSON"},
		{[]string{"submit", writeFile(t, "y.json", `{"kind":"ExecutionCell"}`)}, 1, `no "spec" object`},
		{[]string{"submit", writeFile(t, "ok.json", `{"spec":{"id":"new"}}`), writeFile(t, "z.json", `[1]`)}, 1, "not a JSON object"},
		{[]string{"submit", good, noID, "--id", "x"}, 2, "--id needs exactly one FILE"},
		{[]string{"submit"}, 2, "no FILE"},
	}
	for _, c := range bad {
		code, _, errOut := runCLI(t, b, c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%v = %d %q, want %d and %q", c.args, code, errOut, c.code, c.want)
		}
	}
	if after := b.keys(""); !slices.Equal(before, after) {
		t.Errorf("bad input changed the bucket: %v → %v", before, after)
	}
}

func TestStatusRequeueInspect(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	b.submit("waiting", map[string]any{})
	b.putRaw(b.key("claimed", "running"), []byte(`{"spec":{}}`))
	b.putRaw(b.key("leases", "running"), []byte(`{"node":"host-7","attempts":2,"state":"running"}`))
	b.putRaw(b.key("completed", "done"), []byte(`{"spec":{}}`))
	b.putRaw(b.key("failed", "broke"), []byte(`{"spec":{"id":"broke"}}`))
	b.putRaw(b.key("failed", "broke-too"), []byte(`{"spec":{}}`))

	code, out, errOut := runCLI(t, b, "status", "--json")
	if code != 0 {
		t.Fatalf("status = %d %q", code, errOut)
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v: %s", err, out)
	}
	if st.Counts["pending"] != 1 || st.Counts["claimed"] != 1 || st.Counts["completed"] != 1 || st.Counts["failed"] != 2 {
		t.Errorf("counts = %v", st.Counts)
	}
	if len(st.InFlight) != 1 || st.InFlight[0].ID != "running" || st.InFlight[0].Node != "host-7" || st.InFlight[0].Attempts != 2 {
		t.Errorf("in flight = %+v", st.InFlight)
	}
	if code, out, _ := runCLI(t, b, "status"); code != 0 || !strings.Contains(out, "pending 1  claimed 1  completed 1  failed 2") || !strings.Contains(out, "host-7") {
		t.Errorf("status text = %d %q", code, out)
	}

	if code, out, _ := runCLI(t, b, "inspect", "done"); code != 0 || !strings.Contains(out, "spec done: completed") {
		t.Errorf("inspect done = %d %q", code, out)
	}
	if code, _, errOut := runCLI(t, b, "inspect", "nope"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("inspect nope = %d %q", code, errOut)
	}

	before := b.keys("")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"requeue", "nope"}, 1, "not in failed/"},
		{[]string{"requeue"}, 2, "give IDs or --failed"},
		{[]string{"requeue", "broke", "--failed"}, 2, "not both"},
	} {
		if code, _, errOut := runCLI(t, b, c.args...); code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%v = %d %q, want %d and %q", c.args, code, errOut, c.code, c.want)
		}
	}
	if code, out, _ := runCLI(t, b, "requeue", "--failed", "--older-than", "1h"); code != 0 || !strings.Contains(out, "nothing to requeue") {
		t.Errorf("requeue --failed --older-than 1h = %d %q", code, out)
	}
	if after := b.keys(""); !slices.Equal(before, after) {
		t.Errorf("refused requeues changed the bucket: %v → %v", before, after)
	}

	if code, out, errOut := runCLI(t, b, "requeue", "broke"); code != 0 || !strings.Contains(out, "requeued broke") {
		t.Fatalf("requeue broke = %d %q %q", code, out, errOut)
	}
	if b.exists(b.key("failed", "broke")) {
		t.Error("broke still in failed/")
	}
	if body, meta := b.get(b.key("pending", "broke")); string(body) != `{"spec":{"id":"broke"}}` || meta["fleetd-attempts"] != "0" {
		t.Errorf("pending/broke = %s %v", body, meta)
	}
	if code, out, _ := runCLI(t, b, "requeue", "--failed", "--json"); code != 0 || !strings.Contains(out, `"broke-too"`) {
		t.Errorf("requeue --failed = %d %q", code, out)
	}
	if got := b.ids("failed"); len(got) != 0 {
		t.Errorf("failed/ = %v after requeue --failed", got)
	}
}

// TestSystemdUnitVerifies checks deploy/fleetd.service with systemd-analyze,
// pointed at the binary under test and a real environment file.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	unit, err := os.ReadFile("../../deploy/fleetd.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	envFile := filepath.Join(dir, "fleetd.env")
	if err := os.WriteFile(envFile, []byte("CELLOS_FLEET_BUCKET=b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer("/usr/local/bin/fleetd", env.fleetd, "/etc/fleetd/fleetd.env", envFile).Replace(string(unit))
	path := filepath.Join(dir, "fleetd.service")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
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
	a.logs.awaitEvent(t, "spec.finalised", 2)
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q once idle, want 200", code, body)
	}
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
