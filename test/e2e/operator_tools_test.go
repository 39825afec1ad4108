package e2e

// The operator tools through the real binary: submit, status, requeue,
// inspect and their JSON shapes, and tools facing a missing bucket.

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/faultproxy"
)

// TestRequeueHoldsTheLease: fleetd requeue holds the spec's lease until
// failed/ is deleted, so no agent can claim, run and fail the spec again in
// between (whose new failure record the requeue would then delete).
// From issue 8, case 14; was TestCase14RequeueHoldsTheLease.
func TestRequeueHoldsTheLease(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	body := []byte(`{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"f","test":{}}}`)
	b.putRaw(b.key("failed", "f"), body)
	rule := protocolDelete(keyOf(b, "failed", "f"), "")
	rule.Action = faultproxy.Hold
	del := p.Add(rule)

	type cliResult struct {
		err         error
		code        int
		out, errOut string
	}
	done := make(chan cliResult, 1)
	cmd := exec.Command(env.fleetd, "requeue", "f")
	cmd.Env = append(os.Environ(), env.server.Env()...)
	cmd.Env = append(cmd.Env, "CELLOS_FLEET_BUCKET="+b.name, "AWS_ENDPOINT_URL_S3="+p.URL())
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	go func() {
		err := cmd.Run()
		done <- cliResult{err, cmd.ProcessState.ExitCode(), out.String(), errOut.String()}
	}()
	awaitFired(t, del, 1) // pending/f is written; the requeue holds the lease

	a := startAgent(t, b, caseBVia(p, nil))
	a.logs.awaitEvent(t, "claim.conflict", 1)
	if n := len(a.cellEvents()); n != 0 {
		t.Errorf("f ran while the requeue held its lease (%d events)", n)
	}
	if !b.exists(b.key("pending", "f")) || !b.exists(b.key("failed", "f")) {
		t.Errorf("during the requeue: pending/ %v, failed/ %v; want both", b.exists(b.key("pending", "f")), b.exists(b.key("failed", "f")))
	}
	del.Release()
	r := <-done
	if _, ok := r.err.(*exec.ExitError); r.err != nil && !ok {
		t.Fatalf("run fleetd requeue: %v", r.err)
	}
	if r.code != 0 || !strings.Contains(r.out, "requeued f") {
		t.Errorf("requeue f = %d %q %q", r.code, r.out, r.errOut)
	}
	b.waitCount("completed", 1)
	caseBPoll(t, "an empty leases/", func() bool { return len(b.ids("leases")) == 0 })
	caseBStop(t, a)
	assertInvariant(t, b, map[string]finalState{"f": {"completed", body}})
	if got := starts(a.cellEvents()); got["f"] != 1 {
		t.Errorf("runs = %v, want f once", got)
	}
}

// TestCLISubmitStdinAndJSONShapes: submit - reads standard input; status
// --json has every count, an empty list as [], ages as non-negative numbers.
func TestCLISubmitStdinAndJSONShapes(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	code, out, errOut := runCLIStdin(t, b, `{"spec":{"id":"from-stdin"}}`, "submit", "-")
	if code != 0 || !strings.Contains(out, "submitted from-stdin") {
		t.Fatalf("submit - = %d %q %q", code, out, errOut)
	}
	if code, _, errOut := runCLIStdin(t, b, `{"spec":{}}`, "submit", "-"); code != 2 || !strings.Contains(errOut, "no spec id") {
		t.Errorf("submit - without an id = %d %q, want 2 and a request for --id", code, errOut)
	}
	b.putRaw(b.key("leases", "running"), []byte(`{"node":"host-7","attempts":1,"state":"running"}`))
	code, out, errOut = runCLI(t, b, "status", "--json")
	if code != 0 {
		t.Fatalf("status --json = %d %q", code, errOut)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatal(err)
	}
	var counts map[string]int
	_ = json.Unmarshal(raw["counts"], &counts)
	for _, st := range []string{"pending", "claimed", "completed", "failed"} {
		if _, ok := counts[st]; !ok {
			t.Errorf("status --json counts lack %q: %s", st, raw["counts"])
		}
	}
	var inFlight []map[string]any
	_ = json.Unmarshal(raw["in_flight"], &inFlight)
	if len(inFlight) != 1 {
		t.Fatalf("in_flight = %s", raw["in_flight"])
	}
	if age, ok := inFlight[0]["lease_age_seconds"].(float64); !ok || age < 0 {
		t.Errorf("lease_age_seconds = %v, want a number >= 0", inFlight[0]["lease_age_seconds"])
	}
	empty := newBucket(t)
	if _, out, _ := runCLI(t, empty, "status", "--json"); !strings.Contains(out, `"in_flight": []`) {
		t.Errorf("status --json on an empty queue: %s, want in_flight []", out)
	}
}

// runToolWith runs a fleetd subcommand with the test server's environment and
// vars over it, and returns its exit code and stderr.
func runToolWith(t *testing.T, vars []string, args ...string) (int, string) {
	t.Helper()
	needStore(t)
	cmd := exec.Command(env.fleetd, args...)
	cmd.Env = append(append(os.Environ(), env.server.Env()...), vars...)
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run fleetd %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), errOut.String()
}

func TestToolsNameTheRealCause(t *testing.T) {
	t.Parallel()
	spec := writeFile(t, "job.json", `{"spec":{"id":"job-1"}}`)
	missing := []string{"CELLOS_FLEET_BUCKET=no-such-bucket-here"}
	for _, args := range [][]string{{"inspect", "job-1"}, {"status"}, {"requeue", "job-1"}, {"submit", spec}} {
		if code, errOut := runToolWith(t, missing, args...); code != 1 || !strings.Contains(errOut, "no such bucket") {
			t.Errorf("%v on a missing bucket = %d %q, want 1 naming the missing bucket", args, code, errOut)
		}
	}
	if _, errOut := runToolWith(t, missing, "inspect", "job-1"); !strings.Contains(errOut, `bucket "no-such-bucket-here" does not exist`) {
		t.Errorf("inspect on a missing bucket: %q, want the bucket named", errOut)
	}

	b := newBucket(t)
	existing := []string{"CELLOS_FLEET_BUCKET=" + b.name}
	if code, errOut := runToolWith(t, existing, "inspect", "job-1"); code != 1 || !strings.Contains(errOut, "spec job-1 not found") {
		t.Errorf("inspect of a missing spec = %d %q, want 1 and not found", code, errOut)
	}
	wrongSecret := append(existing, "AWS_SECRET_ACCESS_KEY=wrong-secret")
	if code, errOut := runToolWith(t, wrongSecret, "inspect", "job-1"); code != 1 || !strings.Contains(errOut, "access denied") {
		t.Errorf("inspect with a wrong secret = %d %q, want 1 and access denied", code, errOut)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	if code, errOut := runToolWith(t, append(existing, "AWS_ENDPOINT_URL_S3="+dead), "inspect", "job-1"); code != 1 || !strings.Contains(errOut, "cannot reach the S3 endpoint ("+dead+")") {
		t.Errorf("inspect with S3 unreachable = %d %q, want 1 and the endpoint named", code, errOut)
	}
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

// TestSubmitUploadsUnchangedAndRefusesDuplicates: fleetd submit uploads the
// files' bytes unchanged under their spec id (or --id, or the file's name),
// refuses a duplicate unless --replace, and bad input changes nothing.
// Was TestSubmit.
func TestSubmitUploadsUnchangedAndRefusesDuplicates(t *testing.T) {
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

// TestStatusInspectAndRequeueReportAndMoveSpecs: fleetd status counts each
// state and lists what is in flight, inspect shows one spec, requeue moves
// failed specs back to pending/ (by id, or --failed --older-than), and refused
// requeues change nothing. Was TestStatusRequeueInspect.
func TestStatusInspectAndRequeueReportAndMoveSpecs(t *testing.T) {
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
