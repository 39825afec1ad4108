package e2e

// The randomized soak: several agents behind a fault-injecting proxy, random
// faults of every kind, an outage, and one agent killed -9 and restarted. It
// checks the invariant against S3 directly. `make test` runs the short
// version; `make soak` (FLEETD_SOAK=long) the long one.

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/faultproxy"
)

// soakPlan sizes one soak run.
type soakPlan struct {
	agents, specs, long int
	concurrency         string
	ttl                 time.Duration
	// outage must stay well under what a running cell survives,
	// ttl − max(1 s, ttl/5) − ttl/3 (docs/PROTOCOL.md), with room for the
	// random faults and the SlowDown pause after it: a longer one stops cells,
	// and they run again, by design.
	outage    time.Duration
	faultRate float64
	deadline  time.Duration
}

func soakPlanFromEnv() soakPlan {
	if os.Getenv("FLEETD_SOAK") == "long" {
		return soakPlan{agents: 4, specs: 400, long: 12, concurrency: "6", ttl: 60 * time.Second,
			outage: 20 * time.Second, faultRate: 0.14, deadline: 20 * time.Minute}
	}
	return soakPlan{agents: 3, specs: 120, long: 4, concurrency: "4", ttl: 9 * time.Second,
		outage: 2 * time.Second, faultRate: 0.12, deadline: 4 * time.Minute}
}

func TestSoak(t *testing.T) {
	t.Parallel()
	plan := soakPlanFromEnv()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FLEETD_SOAK_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("soak: %+v seed %d", plan, seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	b := newBucket(t)
	proxy, err := faultproxy.Start(env.server.URL, seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)

	// Specs: most are short; a few run long enough to renew their lease.
	bodies := map[string][]byte{}
	for i := range plan.specs {
		id := fmt.Sprintf("s-%03d", i)
		sleep := rng.IntN(51)
		if i < plan.long {
			sleep = int(plan.ttl.Milliseconds()) * 3 / 2
		}
		bodies[id] = b.submit(id, map[string]any{"sleepMs": sleep})
	}

	settings := func(node string) map[string]string {
		return map[string]string{
			"AWS_ENDPOINT_URL_S3":           proxy.URL(),
			"CELLOS_FLEET_NODE_ID":          node,
			"CELLOS_FLEET_CONCURRENCY":      plan.concurrency,
			"CELLOS_FLEET_LEASE_TTL_MS":     strconv.FormatInt(plan.ttl.Milliseconds(), 10),
			"CELLOS_FLEET_POLL_INTERVAL_MS": "100",
			"CELLOS_FLEET_STOP_GRACE_MS":    "500",
			"CELLOS_FLEET_S3_TIMEOUT_MS":    "2000",
			"CELLOS_FLEET_LOG_LEVEL":        "info",
		}
	}
	var agents []*agent
	for i := range plan.agents {
		agents = append(agents, startAgent(t, b, settings(fmt.Sprintf("n%d", i))))
	}

	// Random faults of every kind, on every request, after the agents' self-tests.
	all := regexp.MustCompile(`^fleet/`)
	share := plan.faultRate / 7
	for _, r := range []faultproxy.Rule{
		{Key: all, Action: faultproxy.ErrorBefore, Status: 503, Prob: share},
		{Key: all, Action: faultproxy.ErrorBefore, Status: 500, Prob: share},
		{Key: all, Action: faultproxy.ErrorAfter, Status: 500, Prob: share},
		{Key: all, Action: faultproxy.ErrorAfter, Status: 503, Prob: share},
		{Key: all, Action: faultproxy.ResetBefore, Prob: share},
		{Key: all, Action: faultproxy.ResetAfter, Prob: share},
		{Key: all, Action: faultproxy.ResetMidResponse, Prob: share / 2},
		{Key: all, Action: faultproxy.Delay, Delay: 300 * time.Millisecond, Prob: share / 2},
		{Query: "list-type=2", Action: faultproxy.ErrorAfter, Status: 503, Prob: share},
	} {
		proxy.Add(r)
	}

	// Kill one agent mid-cell and start a new one in its place.
	victim := agents[0]
	victim.logs.awaitEvent(t, "cell.started", 3)
	victim.crash()
	// The specs it was running may run again elsewhere: every cell it started
	// and did not finish (a supervisor that had not yet written its own start
	// event outlives the kill, so fleetd's log is the record).
	inFlight := map[string]bool{}
	for _, l := range victim.logs.events("cell.started") {
		inFlight[l["spec_id"].(string)] = true
	}
	for _, l := range victim.logs.events("spec.finished") {
		delete(inFlight, l["spec_id"].(string))
	}
	agents = append(agents, startAgent(t, b, settings("n0-restarted")))

	// An outage: every request refused, then every connection reset.
	proxy.SetDown(503)
	time.Sleep(plan.outage / 2) // the outage's length is the point, not a wait for an event
	proxy.SetDown(0)
	time.Sleep(plan.outage / 2)
	proxy.SetUp()

	// Done when every spec has a result and nothing else is left; then faults stop
	// so the agents drain cleanly.
	deadline := time.Now().Add(plan.deadline)
	for {
		done := len(b.ids("completed")) + len(b.ids("failed"))
		left := len(b.ids("pending")) + len(b.ids("claimed")) + len(b.ids("leases"))
		if done >= plan.specs && left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("after %v: %d results, %d objects left in pending/claimed/leases", plan.deadline, done, left)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	proxy.Clear()
	for _, a := range agents[1:] {
		a.signal(syscall.SIGTERM)
		if code := a.wait(); code != 0 {
			t.Errorf("agent exit code %d", code)
		}
	}

	runs := map[string]int{}
	for _, a := range agents {
		for id, n := range runsOf(a.cellEvents(), "start") {
			runs[id] += n
		}
		// A crash is the Go runtime's panic text on stderr, not a JSON line with
		// an event (a recovered worker.panic has both), so the word is matched.
		if strings.Contains(a.logs.text(), "panic") {
			t.Errorf("an agent panicked:\n%s", a.logs.text())
		}
	}
	var lost, both, extra, changed []string
	completed, failed := set(b.ids("completed")), set(b.ids("failed"))
	for id, body := range bodies {
		switch {
		case completed[id] && failed[id]:
			both = append(both, id)
		case !completed[id] && !failed[id]:
			lost = append(lost, id)
		case completed[id]:
			if got, _ := b.get(b.key("completed", id)); !bytes.Equal(got, body) {
				changed = append(changed, id)
			}
		}
		if runs[id] > 1 && !inFlight[id] {
			extra = append(extra, fmt.Sprintf("%s×%d", id, runs[id]))
			for _, a := range agents {
				for _, l := range a.logs.jsonLines(t, `"spec_id":"`+id+`"`) {
					t.Logf("%s: %v", id, l)
				}
			}
		}
	}
	for _, state := range []string{"pending", "claimed", "leases"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("stuck in %s/: %v", state, left)
		}
	}
	t.Logf("soak: %d specs, %d completed, %d failed, %d killed mid-cell, %d proxied requests",
		plan.specs, len(completed), len(failed), len(inFlight), proxy.Requests())
	if len(lost)+len(both)+len(extra)+len(changed) > 0 {
		t.Errorf("lost %v; in both folders %v; extra runs without a kill %v; bytes changed %v", lost, both, extra, changed)
	}
	if len(failed) != 0 {
		t.Errorf("failed/ holds %v, but every cell exits 0", b.ids("failed"))
	}
}

func runsOf(evs []cellEvent, what string) map[string]int {
	n := map[string]int{}
	for _, e := range evs {
		if e.what == what {
			n[e.id]++
		}
	}
	return n
}

func set(ids []string) map[string]bool {
	m := map[string]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}
