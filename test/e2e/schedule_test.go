package e2e

// Issue 22, periodic specs: three agents, a schedule @every 5s, one agent
// killed and restarted, S3 faults through the proxy: every due time is
// submitted once, none twice, none missed while an agent was up. And the
// tool's bad input changes nothing.

import (
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/faultproxy"
	"github.com/cellos/fleetd/internal/schedule"
)

func TestScheduleSubmitsEachDueTimeOnceAcrossAgentsAndFaults(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	proxy := startProxy(t)
	const every = 5 * time.Second
	if code, out, errOut := runToolOn(t, b, nil, "schedule", "add", "tick", "--cron", "@every 5s", specFile(t, "tick", nil)); code != 0 {
		t.Fatalf("schedule add: exit %d\n%s%s", code, out, errOut)
	}
	// Faults on the schedule's writes and reads and on the leases: answers
	// lost after the write landed, errors before it, connections reset.
	sched := regexp.MustCompile(`schedules/`)
	var handles []*faultproxy.Handle
	for _, r := range []faultproxy.Rule{
		{Method: "PUT", Key: sched, Action: faultproxy.ErrorAfter, Status: 500, Prob: 0.25},
		{Method: "GET", Key: sched, Action: faultproxy.ErrorBefore, Status: 503, Prob: 0.1},
		{Method: "PUT", Key: regexp.MustCompile(`/pending/tick-`), Action: faultproxy.ErrorAfter, Status: 500, Prob: 0.25},
		{Method: "PUT", Key: regexp.MustCompile(`/leases/tick-`), Action: faultproxy.ResetAfter, Prob: 0.15},
		{Method: "DELETE", Key: regexp.MustCompile(`/leases/tick-`), Action: faultproxy.ErrorAfter, Status: 503, Prob: 0.15},
	} {
		handles = append(handles, proxy.Add(r))
	}
	agents := map[string]*agent{}
	start := func(node string) *agent {
		a := startAgent(t, b, intentsAgent(proxy, node, map[string]string{"CELLOS_FLEET_POLL_INTERVAL_MS": "500"}))
		a.logs.awaitEvent(t, "schedule.loaded", 1)
		return a
	}
	for _, n := range []string{"a", "b", "c"} {
		agents[n] = start(n)
	}
	from := time.Now() // every agent knows the schedule from here on
	time.Sleep(12 * time.Second)
	agents["b"].signal(syscall.SIGKILL)
	agents["b"].wait()
	time.Sleep(6 * time.Second)
	restarted := start("b")
	time.Sleep(12 * time.Second)
	until := time.Now() // a and c were up throughout
	var fired []int
	for _, h := range handles {
		fired = append(fired, h.Fired())
	}
	proxy.Clear()
	if slices.Max(fired) == 0 {
		t.Fatalf("no fault fired: %v", fired)
	}

	var want []string
	for due := from.Truncate(every).Add(every); !due.After(until); due = due.Add(every) {
		want = append(want, schedule.SpecID("tick", due))
	}
	// Each due time runs once: wait until every one has a result, then count
	// the runs the test supervisor recorded on every agent.
	deadline := time.Now().Add(60 * time.Second)
	for {
		done := b.ids("completed")
		missing := 0
		for _, id := range want {
			if !slices.Contains(done, id) {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d due times have no result after 60 s: want %v, completed %v", missing, len(want), want, done)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Every spec of the schedule has the same spec.id; fleetd's id is in its
	// log: count the cells started per id on every agent.
	runs := map[string]int{}
	for _, a := range []*agent{agents["a"], agents["b"], agents["c"], restarted} {
		for _, e := range a.logs.events("cell.started") {
			id, _ := e["spec_id"].(string)
			runs[id]++
		}
	}
	for _, id := range want {
		if runs[id] != 1 {
			t.Errorf("%s ran %d times, want once", id, runs[id])
		}
	}
	for id, n := range runs {
		if n > 1 {
			t.Errorf("%s ran %d times", id, n)
		}
		if !strings.HasPrefix(id, "tick-") {
			t.Errorf("unexpected spec %s ran", id)
		}
	}
	logged := 0
	for _, a := range []*agent{agents["a"], agents["b"], agents["c"], restarted} {
		logged += a.logs.countEvent("schedule.fired")
	}
	t.Logf("%d due times in %v, each run once; %d submissions logged by the agents that made them; faults fired per rule %v",
		len(want), until.Sub(from).Round(time.Second), logged, fired)
	if len(want) < 5 {
		t.Errorf("only %d due times checked", len(want))
	}
}

func TestScheduleToolBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	spec := specFile(t, "x", nil)
	for _, args := range [][]string{
		{"schedule", "add", "nightly", "--cron", "61 * * * *", spec},
		{"schedule", "add", "nightly", "--cron", "* * *", spec},
		{"schedule", "add", "nightly", "--cron", "@every soon", spec},
		{"schedule", "add", "nightly", "--cron", "@every 500ms", spec},
		{"schedule", "add", "night/ly", "--cron", "@daily", spec},
		{"schedule", "add", ".hidden", "--cron", "@daily", spec},
		{"schedule", "add", "nightly", spec},
		{"schedule", "frobnicate"},
	} {
		code, _, errOut := runToolOn(t, b, nil, args...)
		if code != 2 || errOut == "" {
			t.Errorf("fleetd %v: exit %d, %q; want 2 and a clear error", args, code, errOut)
		}
	}
	if keys := b.keys(b.base + "/"); len(keys) != 0 {
		t.Errorf("bad input wrote %v", keys)
	}
	// And a good one: add, ls, refuse a second add, rm.
	if code, out, errOut := runToolOn(t, b, nil, "schedule", "add", "nightly", "--cron", "0 2 * * *", spec); code != 0 {
		t.Fatalf("add: exit %d %s%s", code, out, errOut)
	}
	code, out, _ := runToolOn(t, b, nil, "schedule", "ls")
	if code != 0 || !strings.Contains(out, "nightly") || !strings.Contains(out, "0 2 * * *") || !strings.Contains(out, "T02:00:00Z") {
		t.Errorf("ls: exit %d\n%s\nwant nightly, its expression and its next due time at 02:00 UTC", code, out)
	}
	if code, _, errOut := runToolOn(t, b, nil, "schedule", "add", "nightly", "--cron", "@hourly", spec); code != 1 || !strings.Contains(errOut, "exists") {
		t.Errorf("second add: exit %d %q, want 1 and 'exists'", code, errOut)
	}
	if code, out, errOut := runToolOn(t, b, nil, "schedule", "rm", "nightly"); code != 0 {
		t.Fatalf("rm: exit %d %s%s", code, out, errOut)
	}
	if keys := b.keys(b.base + "/"); len(keys) != 0 {
		t.Errorf("after rm: %v, want nothing (no due time was submitted, so there is no marker)", keys)
	}
}
