package e2e

// fleetd pause and resume across a fleet of agents.

import (
	"strings"
	"syscall"
	"testing"
)

// TestPauseAcrossAgents: fleetd pause stops two agents from claiming within
// a poll interval; they stay up and say so; resume lets them run the backlog.
func TestPauseAcrossAgents(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	agents := []*agent{startAgent(t, b, nil), startAgent(t, b, nil)}
	if code, out, errOut := runCLI(t, b, "pause"); code != 0 || !strings.Contains(out, "paused fleet") {
		t.Fatalf("pause = %d %q %q", code, out, errOut)
	}
	for _, a := range agents {
		a.logs.awaitEvent(t, "queue.paused", 1)
	}
	for i := range 3 {
		b.submit("held-"+string(rune('a'+i)), map[string]any{})
	}
	for _, a := range agents {
		awaitPolls(t, a, 3) // three listings that saw the specs and the marker
	}
	if got := b.ids("pending"); len(got) != 4 || got[0] != "!paused" {
		t.Errorf("pending/ = %v while paused, want the marker and the 3 specs", got)
	}
	for _, a := range agents {
		if n := len(a.cellEvents()); n != 0 {
			t.Errorf("a paused agent ran %d cells", n)
		}
	}
	if code, out, _ := runCLI(t, b, "status"); code != 0 || !strings.Contains(out, "paused by") {
		t.Errorf("status while paused = %d %q, want it to say so", code, out)
	}
	if code, out, errOut := runCLI(t, b, "resume"); code != 0 || !strings.Contains(out, "resumed fleet") {
		t.Fatalf("resume = %d %q %q", code, out, errOut)
	}
	b.waitCount("completed", 3)
	for _, a := range agents {
		a.logs.awaitEvent(t, "queue.resumed", 1)
		a.signal(syscall.SIGTERM)
		if code := a.wait(); code != 0 {
			t.Errorf("exit code %d", code)
		}
	}
}
