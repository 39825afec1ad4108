package e2e

// Issue 22, retries: a failed cell runs again after a backoff, up to the
// spec's (or the agent's) limit, each failure's reason in the record; the
// backoff doubles with full jitter. Checked through the real binary, the test
// supervisor's own record of its runs and the queue in S3.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// specFile writes a spec for the test supervisor and returns its path.
func specFile(t *testing.T, id string, test map[string]any) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"apiVersion": "cellos/v1", "kind": "ExecutionCell",
		"spec": map[string]any{"id": id, "test": test}})
	path := filepath.Join(t.TempDir(), id+".json")
	if err := os.WriteFile(path, body, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runTool runs `fleetd args...` on b to its end and returns its exit code
// and output.
func runToolOn(t *testing.T, b *bucket, vars map[string]string, args ...string) (int, string, string) {
	t.Helper()
	tl := startTool(t, b, vars, args...)
	code := tl.wait()
	return code, tl.out.String(), tl.err.String()
}

func TestRetriesRunAFailingSpecAgainAfterTheBackoff(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	const backoff = 1000 * time.Millisecond
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_RETRY_BACKOFF_MS": "1000"})
	spec := specFile(t, "flaky", map[string]any{"failRuns": map[string]any{"dir": t.TempDir(), "n": 2}})
	if code, out, errOut := runToolOn(t, b, nil, "submit", "--retries", "2", spec); code != 0 {
		t.Fatalf("submit --retries 2: exit %d\n%s%s", code, out, errOut)
	}
	b.waitCount("completed", 1)
	var runs []cellEvent
	for _, e := range a.cellEvents() {
		if e.id == "flaky" {
			runs = append(runs, e)
		}
	}
	if n := len(runs); n != 6 {
		t.Fatalf("%d start and end events, want 3 runs (2 failed, then one that completed): %+v", n, runs)
	}
	// Each retry starts no sooner than the not-before time its holder wrote
	// (the full-jitter draw in [0, backoff × 2^k]) and within a poll and a
	// second of it.
	retries := a.logs.events("spec.retry")
	if len(retries) != 2 {
		t.Fatalf("%d spec.retry events, want 2", len(retries))
	}
	for k := range 2 {
		failedAt := time.Unix(0, runs[2*k+1].at)
		next := time.Unix(0, runs[2*k+2].at)
		nb, err := time.Parse(time.RFC3339Nano, retries[k]["not_before"].(string))
		if err != nil {
			t.Fatal(err)
		}
		limit := backoff << k
		if nb.Before(failedAt.Add(-time.Second)) || nb.After(failedAt.Add(limit+time.Second)) {
			t.Errorf("retry %d: not before %v, want within [0, %v] of the failure at %v", k+1, nb, limit, failedAt)
		}
		if next.Before(nb) {
			t.Errorf("retry %d started at %v, before its not-before time %v", k+1, next, nb)
		}
		// A poll (200 ms) and the claim; 2 s of slack for a loaded machine
		// (make test runs the race build beside the simulator).
		if late := next.Sub(nb); late > 200*time.Millisecond+2*time.Second {
			t.Errorf("retry %d started %v after its not-before time, want within a poll (200ms) and two seconds", k+1, late)
		}
		t.Logf("retry %d: gap %v (backoff at most %v), %v after not-before", k+1, next.Sub(failedAt), limit, next.Sub(nb))
	}
	_, meta := b.get(b.key("completed", "flaky"))
	if meta["fleetd-retried"] != "2" {
		t.Errorf("completed record: fleetd-retried %q, want 2", meta["fleetd-retried"])
	}
	if r := meta["fleetd-reasons"]; strings.Count(r, "supervisor exit 7") != 2 {
		t.Errorf("completed record: fleetd-reasons %q, want both failures' reasons", r)
	}
	if got := b.keys(b.base + "/pending/"); len(got) != 0 {
		t.Errorf("left in pending/: %v", got)
	}
}

func TestRetriesUsedUpFileTheSpecWithEveryReason(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	// The agent's own limit applies to a spec that sets none.
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_RETRIES": "1", "CELLOS_FLEET_RETRY_BACKOFF_MS": "100"})
	b.submit("doomed", map[string]any{"exit": 3})
	b.waitCount("failed", 1)
	if n := starts(a.cellEvents())["doomed"]; n != 2 {
		t.Errorf("doomed ran %d times, want 2 (one retry)", n)
	}
	_, meta := b.get(b.key("failed", "doomed"))
	if meta["fleetd-reason"] != "supervisor exit 3" || meta["fleetd-retried"] != "1" ||
		meta["fleetd-reasons"] != "supervisor exit 3 | supervisor exit 3" {
		t.Errorf("failed record %v: want the last reason, 1 retry and both reasons", meta)
	}
	// Runs lost to dead nodes are counted apart: this spec lost none.
	if meta["fleetd-attempts"] != "1" {
		t.Errorf("fleetd-attempts %q, want 1: a retried run that ended on its own is not a lost one", meta["fleetd-attempts"])
	}
}

func TestRetriesBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	spec := specFile(t, "x", nil)
	for _, args := range [][]string{
		{"submit", "--retries", "-1", spec},
		{"submit", "--retries", "two", spec},
		{"submit", "--in", "soon", spec},
		{"submit", "--in", "-5s", spec},
		{"submit", "--at", "tomorrow", spec},
		{"submit", "--in", "5s", "--at", "2030-01-01T00:00:00Z", spec},
		{"submit", "--in", "5s", "--replace", spec},
	} {
		code, _, errOut := runToolOn(t, b, nil, args...)
		if code != 2 || !strings.Contains(errOut, "--") {
			t.Errorf("fleetd %v: exit %d, %q; want 2 and an error naming the flag", args, code, errOut)
		}
	}
	if keys := b.keys(b.base + "/"); len(keys) != 0 {
		t.Errorf("bad input wrote %v", keys)
	}
	code, _, errOut := startAgentExit(t, b, map[string]string{"CELLOS_FLEET_RETRIES": "-2"})
	if code != 2 || !strings.Contains(errOut, "CELLOS_FLEET_RETRIES") {
		t.Errorf("agent with CELLOS_FLEET_RETRIES=-2: exit %d, %q; want 2 naming the setting", code, errOut)
	}
}

// startAgentExit runs fleetd with settings that should stop it at start,
// and returns its exit code and output.
func startAgentExit(t *testing.T, b *bucket, settings map[string]string) (int, string, string) {
	t.Helper()
	vars := map[string]string{"CELLOS_FLEET_SUPERVISOR": env.supervisor}
	for k, v := range settings {
		vars[k] = v
	}
	tl := startTool(t, b, vars)
	return tl.wait(), tl.out.String(), tl.err.String()
}
