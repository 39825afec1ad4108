package e2e

// Store outages and cut-off hosts: cells freeze and thaw instead of dying,
// sessions are judged stale only after the fleet's patience, leases are never
// stolen from healthy nodes, and retries outlast an outage (issue 8's cases
// 10 and 11, and the liveness tests).

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/faultproxy"
)

// TestOutageDoesNotExhaustRetries: a 4 s outage of 503s while 30 cells are in
// flight on 2 agents: every result is written once the store is back, nothing
// runs twice, and retries are never switched off by a client-side quota.
// From issue 8, case 10; was TestCase10OutageDoesNotExhaustRetries.
func TestOutageDoesNotExhaustRetries(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	release := filepath.Join(t.TempDir(), "release")
	want := map[string]finalState{}
	for i := range 30 {
		id := fmt.Sprintf("q-%02d", i)
		want[id] = finalState{"completed", b.submit(id, map[string]any{"waitFor": release})}
	}
	settings := func(node string) map[string]string {
		return caseBVia(p, map[string]string{"CELLOS_FLEET_NODE_ID": node, "CELLOS_FLEET_CONCURRENCY": "15",
			"CELLOS_FLEET_LEASE_TTL_MS": "10000"})
	}
	agents := []*agent{startAgent(t, b, settings("n0")), startAgent(t, b, settings("n1"))}
	b.waitCount("claimed", 30) // all 30 in flight
	p.SetDown(503)
	// The cells end during the outage: their results must wait for the store.
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // the outage's length is the fault, not a synchronisation
	p.SetUp()
	b.waitCount("completed", 30)
	runs := map[string]int{}
	for _, a := range agents {
		caseBStop(t, a)
		for id, n := range starts(a.cellEvents()) {
			runs[id] += n
		}
	}
	assertInvariant(t, b, want)
	for id := range want {
		if runs[id] != 1 {
			t.Errorf("spec %s ran %d times, want once", id, runs[id])
		}
	}
	for _, a := range agents {
		// "retry quota exceeded" is the AWS SDK's error text, not a log line of
		// fleetd's: it has no event of ours to count, so its wording is matched.
		if n := a.logs.count("retry quota exceeded"); n != 0 {
			t.Errorf("%d log lines say retry quota exceeded", n)
		}
	}
}

// TestTTLFloorAndNoStolenLeases: a ttl below what 1-second timestamps can
// judge is refused; at the minimum ttl, cells longer than the ttl on 2 healthy
// nodes are never taken over.
// From issue 8, case 11; was TestCase11TTLFloorAndNoStolenLeases.
func TestTTLFloorAndNoStolenLeases(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	code, _, errOut := runCLIEnv(t, b, map[string]string{"CELLOS_FLEET_LEASE_TTL_MS": "500", "CELLOS_FLEET_SUPERVISOR": env.supervisor})
	if code != 2 || !strings.Contains(errOut, "CELLOS_FLEET_LEASE_TTL_MS") {
		t.Errorf("ttl 500 ms: exit %d %q, want 2 naming CELLOS_FLEET_LEASE_TTL_MS", code, errOut)
	}

	want := map[string]finalState{}
	for i := range 4 {
		id := fmt.Sprintf("long-%d", i)
		want[id] = finalState{"completed", b.submit(id, map[string]any{"sleepMs": 4000})}
	}
	settings := func(node string) map[string]string {
		return fast(map[string]string{"CELLOS_FLEET_NODE_ID": node, "CELLOS_FLEET_CONCURRENCY": "2", "CELLOS_FLEET_LEASE_TTL_MS": "3000"})
	}
	agents := []*agent{startAgent(t, b, settings("n0")), startAgent(t, b, settings("n1"))}
	b.waitCount("completed", 4)
	runs := map[string]int{}
	for _, a := range agents {
		caseBStop(t, a)
		for id, n := range starts(a.cellEvents()) {
			runs[id] += n
		}
		if n := a.logs.countEvent("lease.takeover"); n != 0 {
			t.Errorf("%d leases taken over from healthy nodes", n)
		}
	}
	assertInvariant(t, b, want)
	for id := range want {
		if runs[id] != 1 {
			t.Errorf("spec %s ran %d times, want once", id, runs[id])
		}
	}
}

// Liveness per host (issue 19): one session per agent keeps all its leases
// alive; a host that cannot renew it freezes its cells instead of stopping
// them, and thaws them when the store answers again.

// outage makes every request through p fail (500, before the store).
func outage(p *faultproxy.Proxy) *faultproxy.Handle {
	return p.Add(faultproxy.Rule{Action: faultproxy.ErrorBefore, Status: 500})
}

// TestOutageOfFiveTTLsKillsNoCell: two agents (ttl 6 s) run 8 cells of 25 s;
// every request of both fails for 30 s. The cells freeze and thaw: none is
// killed, none runs twice, all 8 complete once. A cell of 2 s whose outage
// begins 1 s after it started ends frozen-free and its result is held until
// the store answers: it completes once too.
func TestOutageOfFiveTTLsKillsNoCell(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		sleep int // ms each cell runs
		after time.Duration
	}{{"long cells", 25000, 0}, {"short cells, results held", 2000, time.Second}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := newBucket(t)
			p := startProxy(t)
			var ids []string
			for i := range 8 {
				id := fmt.Sprintf("o-%d", i)
				ids = append(ids, id)
				b.submit(id, map[string]any{"sleepMs": c.sleep})
			}
			settings := func(node string) map[string]string {
				return advSettings(p, node, map[string]string{"CELLOS_FLEET_LEASE_TTL_MS": "6000", "CELLOS_FLEET_CONCURRENCY": "4"})
			}
			a1, a2 := startAgent(t, b, settings("n1")), startAgent(t, b, settings("n2"))
			awaitStarts(t, 8, a1, a2)
			time.Sleep(c.after) // the short cells end during the outage
			cut := outage(p)
			began := time.Now()
			if c.after > 0 {
				// Each cell ends in the outage; its result waits for the store.
				caseBPoll(t, "8 results held", func() bool {
					return a1.logs.countEvent("result.held")+a2.logs.countEvent("result.held") >= 8
				})
			}
			time.Sleep(30*time.Second - time.Since(began))
			cut.Remove()
			b.waitCount("completed", 8)
			claimWaitEmpty(t, b)
			claimStop(t, a1, a2)
			want := map[string]finalState{}
			for _, id := range ids {
				body, _ := b.get(b.key("completed", id))
				want[id] = finalState{"completed", body}
			}
			assertInvariant(t, b, want)
			claimRunsOnce(t, ids, a1, a2)
			frozen, thawed := 0, 0
			for _, a := range []*agent{a1, a2} {
				frozen += a.logs.countEvent("cell.frozen")
				thawed += a.logs.countEvent("cell.thawed")
				claimBadEvents(t, a, "cell.killed", "lease.lost", "lease.takeover", "session.ended", "cell.fenced")
			}
			if c.after == 0 && (frozen != 8 || thawed != 8) {
				t.Errorf("%d cells frozen and %d thawed, want all 8 frozen for the outage and thawed after it", frozen, thawed)
			}
			t.Logf("outage of %v: %d cells frozen, %d thawed", 30*time.Second, frozen, thawed)
		})
	}
}

// awaitStarts waits until the agents have started n cells in all.
func awaitStarts(t *testing.T, n int, agents ...*agent) {
	t.Helper()
	caseBPoll(t, fmt.Sprintf("%d cells started", n), func() bool {
		started := 0
		for _, a := range agents {
			for _, e := range a.cellEvents() {
				if e.what == "start" {
					started++
				}
			}
		}
		return started >= n
	})
}

// beats reads the heartbeat files the test supervisor wrote under dir: for
// each run of each spec (id.pid), the times it made progress.
func beats(t *testing.T, dir string) map[string][][]int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	runs := map[string][][]int64{}
	for _, e := range entries {
		id, _, _ := strings.Cut(e.Name(), ".")
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var ts []int64
		for line := range strings.FieldsSeq(string(raw)) {
			n, err := strconv.ParseInt(line, 10, 64)
			if err == nil {
				ts = append(ts, n)
			}
		}
		runs[id] = append(runs[id], ts)
	}
	return runs
}

// TestCutOffHostIsFrozenThenKilled: host A of two is cut off from the store
// for 5 ttls while host B reaches it. A's cells freeze when its session's
// window closes; B ends A's session and runs the specs once; when A reaches
// the store again it learns of the takeover and kills its frozen cells,
// writing nothing. The cells' own heartbeats show that no two runs of a spec
// ever made progress at the same time.
func TestCutOffHostIsFrozenThenKilled(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	dir := t.TempDir()
	var ids []string
	for i := range 3 {
		id := fmt.Sprintf("c-%d", i)
		ids = append(ids, id)
		b.submit(id, map[string]any{"sleepMs": 4000, "beat": map[string]any{"dir": dir, "everyMs": 10}})
	}
	a := startAgent(t, b, advSettings(p, "cut", map[string]string{"CELLOS_FLEET_CONCURRENCY": "3"}))
	a.logs.awaitEvent(t, "cell.started", 3)
	other := claimAgent(t, b, nil, "other", map[string]string{"CELLOS_FLEET_CONCURRENCY": "3"})
	cut := outage(p)
	began := time.Now()
	a.logs.awaitEvent(t, "cell.frozen", 3)
	other.logs.awaitEvent(t, "session.ended", 1)
	b.waitCount("completed", 3)
	time.Sleep(15*time.Second - time.Since(began)) // 5 ttls of 3 s
	cut.Remove()
	a.logs.awaitEvent(t, "cell.killed", 3)
	claimWaitEmpty(t, b)
	claimStop(t, a, other)
	want := map[string]finalState{}
	for _, id := range ids {
		body, meta := b.get(b.key("completed", id))
		want[id] = finalState{"completed", body}
		if meta["fleetd-node"] != "other" {
			t.Errorf("completed/%s written by %q, want other", id, meta["fleetd-node"])
		}
	}
	assertInvariant(t, b, want)
	if n := a.logs.countEvents("cell.thawed", "spec.finished"); n != 0 {
		t.Errorf("the cut-off host thawed or finished %d times after its specs were taken over", n)
	}
	if runs := claimRuns(other); len(runs) != 3 {
		t.Errorf("the other host ran %v, want each spec once", runs)
	}
	frozenAt := claimLogTime(t, a, "cell.frozen")
	for id, rs := range beats(t, dir) {
		if len(rs) != 2 {
			t.Errorf("%s: %d runs beat, want 2 (the frozen one and the other host's)", id, len(rs))
			continue
		}
		first, second := rs[0], rs[1]
		if first[0] > second[0] {
			first, second = second, first
		}
		if last, next := first[len(first)-1], second[0]; last >= next {
			t.Errorf("%s: the first run beat at %v, after the second run's first beat at %v: both made progress at once",
				id, time.Unix(0, last), time.Unix(0, next))
		}
		// Frozen, it beat no more: its last beat is about when the host froze it.
		if last := time.Unix(0, first[len(first)-1]); last.After(frozenAt.Add(time.Second)) {
			t.Errorf("%s: the frozen run beat at %v, after the host froze its cells at %v", id, last, frozenAt)
		}
	}
}

// TestShortCutOffLosesNothing: host A is cut off for less than a ttl while
// host B reaches the store: A's session is never judged stale, its cells
// (frozen or not) go on, and every spec runs once, on A.
func TestShortCutOffLosesNothing(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	var ids []string
	for i := range 3 {
		id := fmt.Sprintf("s-%d", i)
		ids = append(ids, id)
		b.submit(id, map[string]any{"sleepMs": 8000})
	}
	a := startAgent(t, b, advSettings(p, "short", map[string]string{"CELLOS_FLEET_CONCURRENCY": "3", "CELLOS_FLEET_LEASE_TTL_MS": "6000"}))
	a.logs.awaitEvent(t, "cell.started", 3)
	other := claimAgent(t, b, nil, "other", map[string]string{"CELLOS_FLEET_LEASE_TTL_MS": "6000"})
	cut := outage(p)
	time.Sleep(5 * time.Second)
	cut.Remove()
	b.waitCount("completed", 3)
	claimWaitEmpty(t, b)
	claimStop(t, a, other)
	want := map[string]finalState{}
	for _, id := range ids {
		body, meta := b.get(b.key("completed", id))
		want[id] = finalState{"completed", body}
		if meta["fleetd-node"] != "short" {
			t.Errorf("completed/%s written by %q, want the host that was cut off briefly", id, meta["fleetd-node"])
		}
	}
	assertInvariant(t, b, want)
	claimRunsOnce(t, ids, a, other)
	claimBadEvents(t, a, "cell.killed", "lease.lost")
	claimBadEvents(t, other, "lease.takeover", "session.ended")
}

// TestDeadNodeAfterAnOutageWaitsForPatience: both agents lose the store for 2
// ttls and agent A dies during the outage. B, once the store answers again,
// judges A's session only after a ttl of its own renewals landing — after a
// fleet-wide outage every holder gets that long to renew — and then takes
// A's spec over. The test logs what that patience costs the dead node's work.
func TestDeadNodeAfterAnOutageWaitsForPatience(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	release := filepath.Join(t.TempDir(), "release")
	b.submit("d", map[string]any{"waitFor": release})
	a := startAgent(t, b, advSettings(p, "dies", nil))
	a.logs.awaitEvent(t, "cell.started", 1)
	other := startAgent(t, b, advSettings(p, "lives", nil))
	other.logs.awaitEvent(t, "session.started", 1)
	cut := outage(p)
	a.crash()
	time.Sleep(6 * time.Second) // 2 ttls of 3 s
	cut.Remove()
	back := time.Now()
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	other.logs.awaitEvent(t, "lease.takeover", 1)
	b.waitCount("completed", 1)
	ended := claimLogTime(t, other, "session.ended")
	if ended.Before(back.Add(3*time.Second - 500*time.Millisecond)) {
		t.Errorf("B ended A's session %v after the store answered again, before a ttl (3 s) of its own renewals", ended.Sub(back))
	}
	t.Logf("the dead node's session was ended %v after the outage, its spec taken over %v after it",
		ended.Sub(back).Round(100*time.Millisecond), claimLogTime(t, other, "lease.takeover").Sub(back).Round(100*time.Millisecond))
	claimWaitEmpty(t, b)
	claimStop(t, other)
}
