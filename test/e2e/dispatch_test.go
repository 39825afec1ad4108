package e2e

// Dispatch: specs of every outcome run through an agent, N at a time and
// never more, each once across agents, and a cell past its time limit fails.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"testing"
)

// TestEveryOutcomeEndToEndOnALane runs specs of every outcome through one
// agent on a queue lane with a trailing-slash prefix, as a 0.5.1 user might
// have configured it.
// Was TestEndToEnd.
func TestEveryOutcomeEndToEndOnALane(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	b.base = "jobs/lane-a" // CELLOS_FLEET_PREFIX=jobs/ + CELLOS_FLEET_QUEUE_NAME=" lane-a "
	ok1 := b.submit("ok-1", map[string]any{})
	ok2 := b.submit("ok-2", map[string]any{}, pool("cpu"))
	b.submit("exit-3", map[string]any{"exit": 3})
	gpu := b.submit("gpu-only", map[string]any{}, pool("gpu"))
	b.putRaw("jobs/pending/other-lane.json", []byte(`{"spec":{}}`)) // not this lane

	a := startAgent(t, b, map[string]string{
		"CELLOS_FLEET_PREFIX":     "jobs/",
		"CELLOS_FLEET_QUEUE_NAME": " lane-a ",
		"CELLOS_FLEET_POOL_ID":    "cpu",
	})
	b.waitCount("completed", 2)
	b.waitCount("failed", 1)

	if got := b.ids("completed"); !slices.Equal(got, []string{"ok-1", "ok-2"}) {
		t.Errorf("completed = %v", got)
	}
	for id, want := range map[string][]byte{"ok-1": ok1, "ok-2": ok2} {
		if body, _ := b.get(b.key("completed", id)); !bytes.Equal(body, want) {
			t.Errorf("completed/%s.json = %s, want the submitted bytes %s", id, body, want)
		}
	}
	_, meta := b.get(b.key("failed", "exit-3"))
	if meta["fleetd-reason"] != "supervisor exit 3" || meta["fleetd-exit-code"] != "3" || meta["fleetd-outcome"] != "failed" {
		t.Errorf("failed/exit-3 metadata = %v, want reason, exit code 3 and outcome failed", meta)
	}
	if body, _ := b.get(b.key("pending", "gpu-only")); !bytes.Equal(body, gpu) {
		t.Errorf("the gpu spec left pending/ or changed: %s", body)
	}
	if !b.exists("jobs/pending/other-lane.json") {
		t.Error("a spec of another lane was taken")
	}
	// The gate rejects the gpu spec once and then stops fetching it.
	gateLines := func() int { return a.logs.countEvent("gate.skip") }
	before := gateLines()
	awaitPolls(t, a, 3)
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
	if before != 1 || gateLines() != 1 {
		t.Errorf("gate rejected the gpu spec %d times, want once (same ETag)", gateLines())
	}
	for _, state := range []string{"claimed", "leases"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("%s/ still holds %v", state, left)
		}
	}
	evs := a.cellEvents()
	if got := starts(evs); len(got) != 3 || got["ok-1"] != 1 || got["ok-2"] != 1 || got["exit-3"] != 1 {
		t.Errorf("cell starts = %v, want ok-1, ok-2 and exit-3 once each", got)
	}
	for _, e := range evs {
		if e.what != "start" {
			continue
		}
		if e.mode != "600" {
			t.Errorf("spec file %s had mode %s, want 600", e.path, e.mode)
		}
		if _, err := os.Stat(e.path); !os.IsNotExist(err) {
			t.Errorf("spec file %s not removed after the cell (stat: %v)", e.path, err)
		}
	}
	if a.stdout.count(`"spec_id":"ok-1","stream":"stdout","line":"running ok-1"`) != 1 {
		t.Errorf("supervisor stdout not passed through with the spec id:\n%s", a.stdout.text())
	}
	for _, l := range a.logs.jsonLines(t, `"spec_id"`) {
		if l["node"] == nil {
			t.Errorf("log line about a spec without node: %v", l)
		}
	}
	hb := a.logs.events("ops.heartbeat")
	if len(hb) == 0 || hb[0]["queue_name"] != "lane-a" || hb[0]["pool_id"] != "cpu" || hb[0]["in_flight"] == nil {
		t.Errorf("heartbeat events = %v, want queue_name, pool_id and in_flight", hb)
	}
}

// TestConcurrencyBound checks that N cells run at once and never more.
func TestConcurrencyBound(t *testing.T) {
	t.Parallel()
	const n, specs = 4, 16
	b := newBucket(t)
	barrier := t.TempDir()
	for i := range specs {
		b.submit(fmt.Sprintf("c-%02d", i), map[string]any{"sleepMs": 30, "barrier": map[string]any{"dir": barrier, "n": n}})
	}
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_CONCURRENCY": fmt.Sprint(n)})
	b.waitCount("completed", specs)
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	evs := a.cellEvents()
	if got := len(starts(evs)); got != specs {
		t.Fatalf("%d specs started, want %d", got, specs)
	}
	if peak := maxOverlap(evs); peak != n {
		t.Errorf("at most %d cells ran at once, want exactly %d", peak, n)
	}
}

// maxOverlap is the largest number of cells running at one instant.
func maxOverlap(evs []cellEvent) int {
	sorted := slices.Clone(evs)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].at < sorted[j].at })
	cur, peak := 0, 0
	for _, e := range sorted {
		if e.what == "start" {
			cur++
			peak = max(peak, cur)
		} else {
			cur--
		}
	}
	return peak
}

// TestTwoAgentsRunEachSpecOnce puts two agents on one queue.
func TestTwoAgentsRunEachSpecOnce(t *testing.T) {
	t.Parallel()
	const specs = 60
	b := newBucket(t)
	for i := range specs {
		b.submit(fmt.Sprintf("s-%03d", i), map[string]any{})
	}
	settings := map[string]string{"CELLOS_FLEET_CONCURRENCY": "4"}
	settings["CELLOS_FLEET_NODE_ID"] = "node-a"
	a1 := startAgent(t, b, settings)
	settings["CELLOS_FLEET_NODE_ID"] = "node-b"
	a2 := startAgent(t, b, settings)
	b.waitCount("completed", specs)
	for _, a := range []*agent{a1, a2} {
		a.signal(syscall.SIGTERM)
		if code := a.wait(); code != 0 {
			t.Errorf("exit code %d", code)
		}
	}
	runs := starts(append(a1.cellEvents(), a2.cellEvents()...))
	if len(runs) != specs {
		t.Errorf("%d distinct specs ran, want %d", len(runs), specs)
	}
	for id, n := range runs {
		if n != 1 {
			t.Errorf("spec %s ran %d times", id, n)
		}
	}
	for _, state := range []string{"pending", "claimed", "leases", "failed"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("%s/ holds %v", state, left)
		}
	}
	t.Logf("node-a ran %d cells, node-b %d", len(starts(a1.cellEvents())), len(starts(a2.cellEvents())))
}

// awaitPolls waits for n more complete listings of pending/.
func awaitPolls(t *testing.T, a *agent, n int) {
	t.Helper()
	a.logs.awaitEvent(t, "lister.listed", a.logs.countEvent("lister.listed")+n)
}

// TestCellTimeoutFailsTheSpec: a cell running past CELLOS_FLEET_CELL_TIMEOUT_MS
// is stopped with SIGTERM and its spec filed in failed/ with reason timeout.
// Was TestCellTimeout.
func TestCellTimeoutFailsTheSpec(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	b.submit("slow", map[string]any{"waitFor": filepath.Join(t.TempDir(), "never")})
	a := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_CELL_TIMEOUT_MS": "300"}))
	b.waitCount("failed", 1)
	a.signal(syscall.SIGTERM)
	a.wait()
	_, meta := b.get(b.key("failed", "slow"))
	if meta["fleetd-reason"] != "timeout" || meta["fleetd-signal"] != "SIGTERM" {
		t.Errorf("failed/slow metadata = %v, want reason timeout, signal SIGTERM", meta)
	}
}
