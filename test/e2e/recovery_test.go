package e2e

// Recovery: a dead or fenced-off node's specs come back and run, orphaned
// claims are returned, the recovery turn survives lost answers, exhausted
// attempts go to failed/, and a fleet with agents killed -9 loses nothing.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cellos/fleetd/internal/faultproxy"
)

// TestRecoveryIgnoresItsSpecSizeLimit: a spec claimed under a 1 MB limit and
// recovered by a node with a 1 KB limit goes back to pending/ once, then to
// failed/ as too large: the recoverer does not re-take its lease every ttl.
// From issue 8, case 15; was TestCase15RecoveryIgnoresItsSpecSizeLimit.
func TestRecoveryIgnoresItsSpecSizeLimit(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	body := b.submit("large", map[string]any{"waitFor": filepath.Join(t.TempDir(), "never"), "pad": strings.Repeat("x", 4000)})
	a := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_NODE_ID": "claimer"}))
	a.logs.awaitEvent(t, "cell.started", 1)
	a.crash()

	r := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_NODE_ID": "small", "CELLOS_FLEET_MAX_SPEC_BYTES": "1024"}))
	b.waitCount("failed", 1)
	caseBPoll(t, "an empty leases/", func() bool { return len(b.ids("leases")) == 0 })
	caseBStop(t, r)
	assertInvariant(t, b, map[string]finalState{"large": {"failed", body}})
	if _, meta := b.get(b.key("failed", "large")); !strings.Contains(meta["fleetd-reason"], "over the limit of 1024") {
		t.Errorf("failed/large reason = %q, want too large", meta["fleetd-reason"])
	}
	if n := r.logs.countEvent("lease.takeover"); n != 1 {
		t.Errorf("%d lease takeovers, want exactly 1", n)
	}
	if n := len(r.cellEvents()); n != 0 {
		t.Errorf("the small node ran the spec (%d events)", n)
	}
}

// fast makes leases and recovery quick enough for tests.
func fast(settings map[string]string) map[string]string {
	m := map[string]string{
		"CELLOS_FLEET_LEASE_TTL_MS":     "3000",
		"CELLOS_FLEET_POLL_INTERVAL_MS": "100",
		"CELLOS_FLEET_STOP_GRACE_MS":    "500",
	}
	for k, v := range settings {
		m[k] = v
	}
	return m
}

// crash kills fleetd with SIGKILL and its cells with it, as a lost host would.
func (a *agent) crash() {
	a.t.Helper()
	a.signal(syscall.SIGKILL)
	a.wait()
	for _, e := range a.cellEvents() {
		if e.what == "start" {
			_ = syscall.Kill(e.pid, syscall.SIGKILL)
		}
	}
}

func TestKilledNodeWorkIsRecovered(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	never := filepath.Join(t.TempDir(), "never")
	for i := range 4 {
		b.submit(fmt.Sprintf("k-%d", i), map[string]any{"waitFor": never})
	}
	a := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_CONCURRENCY": "4", "CELLOS_FLEET_NODE_ID": "doomed"}))
	a.logs.awaitEvent(t, "cell.started", 4)
	a.crash()
	if got := b.ids("claimed"); len(got) != 4 {
		t.Fatalf("claimed/ = %v after the crash, want the 4 specs", got)
	}
	// The survivor's cells finish at once: the waitFor file now exists.
	if err := os.WriteFile(never, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_CONCURRENCY": "4", "CELLOS_FLEET_NODE_ID": "survivor"}))
	b.waitCount("completed", 4)
	s.signal(syscall.SIGTERM)
	s.wait()
	for _, state := range []string{"pending", "claimed", "leases", "failed"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("%s/ holds %v", state, left)
		}
	}
	for i := range 4 {
		_, meta := b.get(b.key("completed", fmt.Sprintf("k-%d", i)))
		if meta["fleetd-node"] != "survivor" || meta["fleetd-attempts"] != "2" {
			t.Errorf("completed/k-%d metadata = %v, want node survivor, attempt 2", i, meta)
		}
	}
	if n := s.logs.countEvent("lease.takeover"); n != 4 {
		t.Errorf("%d lease takeovers logged, want 4", n)
	}
	// One judgement of the dead node's session settles all four.
	if n := s.logs.countEvent("session.ended"); n != 1 {
		t.Errorf("%d sessions ended, want the dead node's one", n)
	}
}

func TestPausedNodeIsFencedOff(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	release := filepath.Join(t.TempDir(), "release")
	b.submit("p", map[string]any{"waitFor": release})
	paused := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_NODE_ID": "paused"}))
	paused.logs.awaitEvent(t, "cell.started", 1)
	paused.signal(syscall.SIGSTOP)

	other := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_NODE_ID": "other"}))
	other.logs.awaitEvent(t, "lease.takeover", 1)
	other.logs.awaitEvent(t, "cell.started", 1)
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b.waitCount("completed", 1)
	// Both cells are now free to end; the paused node must find its lease gone.
	paused.signal(syscall.SIGCONT)
	paused.logs.awaitEvent(t, "lease.lost", 1)
	for _, a := range []*agent{paused, other} {
		a.signal(syscall.SIGTERM)
		if code := a.wait(); code != 0 {
			t.Errorf("exit code %d", code)
		}
	}
	if n := paused.logs.countEvent("spec.finished"); n != 0 {
		t.Errorf("the paused node finished %d specs after losing its lease", n)
	}
	if n := other.logs.countEvent("spec.finished"); n != 1 {
		t.Errorf("the other node finished %d times, want 1", n)
	}
	_, meta := b.get(b.key("completed", "p"))
	if meta["fleetd-node"] != "other" {
		t.Errorf("completed/p written by %q, want other", meta["fleetd-node"])
	}
	for _, state := range []string{"pending", "claimed", "leases", "failed"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("%s/ holds %v", state, left)
		}
	}
}

// TestRecoveryTurnWithLostAnswers takes the fleet's recovery turn through a
// store that loses the answer of every write of recovery/scan.json (each one
// lands) and fails the first reads of it: "unknown" is not "another node took
// the turn", so the node scans anyway, and a lease-less claim still comes back
// and runs once.
func TestRecoveryTurnWithLostAnswers(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	proxy := startProxy(t)
	marker := keyOf(b, "recovery", "scan")
	lost := proxy.Add(faultproxy.Rule{Method: "PUT", Key: marker, Action: faultproxy.ResetAfter})
	refused := proxy.Add(faultproxy.Rule{Method: "HEAD", Key: marker, Action: faultproxy.ErrorBefore, Status: 503, Times: 2})
	b.putRaw(b.key("claimed", "orphan"), []byte(`{"spec":{"id":"orphan"}}`))

	a := startAgent(t, b, advSettings(proxy, "a", nil))
	b.waitCount("completed", 1)
	awaitFired(t, refused, 2)
	a.signal(syscall.SIGTERM)
	a.wait()
	if lost.Fired() == 0 {
		t.Error("no write of the marker was made")
	}
	if !b.exists(b.key("recovery", "scan")) {
		t.Error("recovery/scan.json absent: the lost writes never landed")
	}
	if got := starts(a.cellEvents()); got["orphan"] != 1 {
		t.Errorf("runs = %v, want orphan once", got)
	}
	b.assertClean()
}

// TestOrphanedClaimIsReturned recreates a claimed/ spec with no lease and no
// pending/ copy (a claimed/ write that landed after its claim was given up,
// or a 0.5.1 agent's copy-and-delete): recovery returns it and it runs.
func TestOrphanedClaimIsReturned(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	b.putRaw(b.key("claimed", "orphan"), []byte(`{"spec":{"id":"orphan"}}`))

	a := startAgent(t, b, fast(nil))
	b.waitCount("completed", 1)
	a.signal(syscall.SIGTERM)
	a.wait()
	if a.logs.countEvent("recovery.orphan") != 1 {
		t.Error("no orphaned-claim recovery logged")
	}
	if got := starts(a.cellEvents()); got["orphan"] != 1 {
		t.Errorf("runs = %v, want orphan once", got)
	}
	for _, state := range []string{"pending", "claimed", "leases"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("%s/ holds %v", state, left)
		}
	}
}

func TestMaxAttemptsGoesToFailed(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	body := []byte(`{"spec":{"id":"tired"}}`)
	b.putRaw(b.key("claimed", "tired"), body)
	b.putRaw(b.key("leases", "tired"), []byte(`{"node":"gone","token":"t","epoch":4,"ttl_ms":300,"attempts":3,"state":"running"}`))

	a := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_MAX_ATTEMPTS": "3"}))
	b.waitCount("failed", 1)
	a.signal(syscall.SIGTERM)
	a.wait()
	got, meta := b.get(b.key("failed", "tired"))
	if string(got) != string(body) || meta["fleetd-reason"] != "abandoned after 3 attempts" || meta["fleetd-outcome"] != "abandoned" {
		t.Errorf("failed/tired = %s %v", got, meta)
	}
	if n := len(a.cellEvents()); n != 0 {
		t.Errorf("an abandoned spec was run (%d events)", n)
	}
	for _, state := range []string{"pending", "claimed", "leases", "completed"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("%s/ holds %v", state, left)
		}
	}
}

// TestAgentKilledTwiceLosesNoSpec: four agents, 400 short cells, one agent
// killed -9 and restarted twice. Every spec completes; only specs in flight at
// a kill may run twice.
// Was TestChaos.
func TestAgentKilledTwiceLosesNoSpec(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	t.Parallel()
	const specs = 400
	b := newBucket(t)
	for i := range specs {
		b.submit(fmt.Sprintf("x-%03d", i), map[string]any{"sleepMs": rand.IntN(51)})
	}
	settings := func(node string) map[string]string {
		return fast(map[string]string{"CELLOS_FLEET_CONCURRENCY": "4", "CELLOS_FLEET_NODE_ID": node, "CELLOS_FLEET_LOG_LEVEL": "info"})
	}
	agents := []*agent{startAgent(t, b, settings("n0")), startAgent(t, b, settings("n1")), startAgent(t, b, settings("n2")), startAgent(t, b, settings("n3"))}
	var killed []*agent
	for round := range 2 {
		victim := agents[0]
		// Kill it mid-run: once it has started some cells of this life.
		victim.logs.awaitEvent(t, "cell.started", 10)
		victim.crash()
		killed = append(killed, victim)
		agents[0] = startAgent(t, b, settings(fmt.Sprintf("n0-life%d", round+2)))
	}
	b.waitCount("completed", specs)
	for _, a := range agents {
		a.signal(syscall.SIGTERM)
		if code := a.wait(); code != 0 {
			t.Errorf("exit code %d", code)
		}
	}

	// Specs in flight at a kill: claimed by a killed agent and not finished by it.
	cut := map[string]bool{}
	for _, a := range killed {
		for _, l := range a.logs.events("spec.claimed") {
			cut[l["spec_id"].(string)] = true
		}
		for _, l := range a.logs.events("spec.finished") {
			delete(cut, l["spec_id"].(string))
		}
	}
	var all []cellEvent
	for _, a := range append(agents, killed...) {
		all = append(all, a.cellEvents()...)
	}
	runs := starts(all)
	twice := 0
	for i := range specs {
		id := fmt.Sprintf("x-%03d", i)
		switch n := runs[id]; {
		case n == 1:
		case n == 2 && cut[id]:
			twice++
		default:
			t.Errorf("spec %s ran %d times (cut by a kill: %v)", id, n, cut[id])
		}
	}
	for _, state := range []string{"pending", "claimed", "leases", "failed"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("%s/ holds %v", state, left)
		}
	}
	t.Logf("chaos: %d specs completed; %d in flight at the 2 kills, %d of them ran twice; every other spec ran once", len(b.ids("completed")), len(cut), twice)
}
