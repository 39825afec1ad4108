package e2e

// A spec's output: the tail of what its cell printed, redacted, beside its
// result, and `fleetd logs`.

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serverSecret is the secret key fleetd runs with in these tests: the value
// it must redact from what a cell prints.
func serverSecret(t *testing.T) string {
	t.Helper()
	needStore(t)
	for _, kv := range env.server.Env() {
		if v, ok := strings.CutPrefix(kv, "AWS_SECRET_ACCESS_KEY="); ok && v != "" {
			return v
		}
	}
	t.Fatal("the test server sets no AWS_SECRET_ACCESS_KEY")
	return ""
}

// The target: 3 MiB printed with the secret in the middle (and once
// more inside the last MiB), exit 3. fleetd logs shows exactly the last MiB,
// in order, without the secret; the record's reason is unchanged; the
// relayed log lines are redacted the same way.
func TestLogsShowTheLastMiBRedacted(t *testing.T) {
	t.Parallel()
	secret := serverSecret(t)
	b := newBucket(t)
	const total = 3 << 20
	b.submit("loud", map[string]any{"exit": 3,
		"bulk": map[string]any{"bytes": total, "secretEnv": "AWS_SECRET_ACCESS_KEY", "secretAt": []float64{0.5, 0.9}}})
	a := startAgent(t, b, nil)
	b.waitCount("failed", 1)
	_, meta := b.get(b.key("failed", "loud"))
	if got := meta["fleetd-reason"]; got != "supervisor exit 3" {
		t.Errorf("reason %q, want the record's usual %q", got, "supervisor exit 3")
	}

	code, out, errOut := runCLI(t, b, "logs", "loud")
	if code != 0 {
		t.Fatalf("fleetd logs = %d, stderr %q", code, errOut)
	}
	if len(out) != 1<<20 {
		t.Errorf("fleetd logs printed %d bytes, want the last 1 MiB (%d)", len(out), 1<<20)
	}
	if strings.Contains(out, secret) {
		t.Error("fleetd logs shows the secret")
	}
	if n := strings.Count(out, "secret=[REDACTED] "); n != 1 {
		t.Errorf("%d redacted secrets in the last MiB, want the one printed there", n)
	}
	// The end is the end of what was printed, and stdout's lines are in order.
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	last := fmt.Sprintf("line %06d ", total/64-1)
	if !strings.HasPrefix(lines[len(lines)-1], last) {
		t.Errorf("last line %.40q, want it to start %q", lines[len(lines)-1], last)
	}
	prev := -1
	for _, l := range lines[1:] { // the first may be cut mid-line
		f := strings.Fields(l)
		if len(f) < 2 {
			t.Fatalf("line %.40q: not a numbered line", l)
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			t.Fatalf("line %.40q: %v", l, err)
		}
		if n <= prev && n%100 != 99 { // stderr's lines may come a little out of step
			t.Fatalf("line %d after %d: out of order", n, prev)
		}
		if n%100 != 99 {
			prev = n
		}
	}

	code, out, _ = runCLI(t, b, "logs", "loud", "--json")
	var j struct {
		ID, Node, Exit, Output string
		Attempt, Bytes         int
		Truncated              bool
	}
	if err := json.Unmarshal([]byte(out), &j); code != 0 || err != nil {
		t.Fatalf("logs --json = %d %v: %.200q", code, err, out)
	}
	if j.ID != "loud" || j.Exit != "3" || j.Attempt != 1 || !j.Truncated || j.Bytes != 1<<20 || j.Node == "" || len(j.Output) != 1<<20 {
		t.Errorf("logs --json: id %q exit %q attempt %d truncated %v bytes %d node %q", j.ID, j.Exit, j.Attempt, j.Truncated, j.Bytes, j.Node)
	}

	// Still relayed to fleetd's log, redacted alike.
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("fleetd exited %d", code)
	}
	relayed := a.stdout.text()
	if strings.Contains(relayed, secret) {
		t.Error("the relayed log shows the secret")
	}
	if n := strings.Count(relayed, "secret=[REDACTED] "); n != 2 {
		t.Errorf("%d redacted secrets relayed, want 2", n)
	}
}

func TestLogsWithoutOutput(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	b.submit("quiet", map[string]any{"exit": 0})
	startAgent(t, b, map[string]string{"CELLOS_FLEET_OUTPUT_BYTES": "0"})
	b.waitCount("completed", 1)
	if b.exists("fleet/output/quiet.txt") {
		t.Error("output written with CELLOS_FLEET_OUTPUT_BYTES=0")
	}
	code, out, errOut := runCLI(t, b, "logs", "quiet")
	if code != 1 || out != "" || !strings.Contains(errOut, "spec quiet has no output") {
		t.Errorf("logs of a spec without output = %d %q %q, want 1 and a clear line", code, out, errOut)
	}
	if code, _, errOut := runCLI(t, b, "logs"); code != 2 {
		t.Errorf("logs with no id = %d %q, want 2", code, errOut)
	}
}

// The output lives in the spec's lane, and --lane finds it; a prune removes
// it with its result.
func TestLogsLaneAndPrune(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	b.base = "fleet/gpu"
	b.submit("lane-1", map[string]any{"print": "hello from the gpu lane"})
	startAgent(t, b, map[string]string{"CELLOS_FLEET_QUEUE_NAME": "gpu"})
	b.waitCount("completed", 1)
	body, meta := b.get("fleet/gpu/output/lane-1.txt")
	if string(body) != "running lane-1\nhello from the gpu lane\n" || meta["fleetd-exit"] != "0" || meta["fleetd-truncated"] != "false" || meta["fleetd-attempts"] != "1" {
		t.Errorf("output %q %v", body, meta)
	}
	if code, out, errOut := runCLI(t, b, "logs", "lane-1", "--lane", "gpu"); code != 0 || !strings.Contains(out, "hello from the gpu lane") {
		t.Errorf("logs --lane gpu = %d %q %q", code, out, errOut)
	}
	if code, _, _ := runCLI(t, b, "logs", "lane-1"); code != 1 {
		t.Errorf("logs without the lane = %d, want 1 (not in the flat layout)", code)
	}
	// A result is pruned once it is older than --older-than on the store's
	// clock, which has whole seconds: try until it is.
	for deadline := time.Now().Add(10 * time.Second); b.exists("fleet/gpu/completed/lane-1.json"); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("prune --older-than 1s left the result for 10s")
		}
		if code, _, errOut := runCLIEnv(t, b, map[string]string{"CELLOS_FLEET_QUEUE_NAME": "gpu"}, "prune", "--older-than", "1s", "--state", "completed"); code != 0 {
			t.Fatalf("prune = %d %q", code, errOut)
		}
	}
	if b.exists("fleet/gpu/output/lane-1.txt") || b.exists("fleet/gpu/completed/lane-1.json") {
		t.Error("prune left the result or its output")
	}
}
