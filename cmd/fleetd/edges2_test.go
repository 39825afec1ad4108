package main

// Integration tests of hostile ids, long keys, submitted attempt counts, busy
// nodes' readiness and hosts that cannot start the supervisor (issue 9).

import (
	"bytes"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// TestHostileIDs: bad specs whose ids need escaping in a COPY's source (the
// reject path of an oversized spec) or in a URL still leave pending/ for
// failed/ with their reason, and valid specs with awkward ids run.
func TestHostileIDs(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	bad := []string{"pct%41", "plus+1", "enc%2Fslash", "new\nline", "all %2F+\n%"}
	big := append([]byte(`{"spec":{"id":"big","pad":"`), bytes.Repeat([]byte("x"), 300)...)
	big = append(big, `"}}`...)
	for _, id := range bad {
		b.putRaw(b.key("pending", "big-"+id), big)
		b.putRaw(b.key("pending", "nj-"+id), []byte(`{"spec":`))
	}
	// The key carries the awkward id; spec.id (which the test supervisor
	// records) a plain one.
	good := map[string]string{"with space": "g1", "ünïcødé-日本": "g2", "q?x=1": "g3", "h#frag": "g4",
		"a&b": "g5", ".": "g6", "..": "g7", "tab\there": "g8"}
	for id, specID := range good {
		b.submit(id, map[string]any{}, func(spec map[string]any) { spec["id"] = specID })
	}

	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_MAX_SPEC_BYTES": "256"})
	b.waitCount("failed", 2*len(bad))
	b.waitCount("completed", len(good))
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}

	for _, id := range bad {
		for id, reason := range map[string]string{"big-" + id: fmt.Sprintf("spec is %d bytes, over the limit of 256", len(big)), "nj-" + id: "invalid spec: not JSON"} {
			if b.exists(b.key("pending", id)) {
				t.Errorf("pending/%q is still there", id)
			}
			if !b.exists(b.key("failed", id)) {
				t.Errorf("failed/%q missing", id)
				continue
			}
			body, meta := b.get(b.key("failed", id))
			if meta["fleetd-outcome"] != "rejected" || !strings.HasPrefix(meta["fleetd-reason"], reason) {
				t.Errorf("failed/%q metadata = %v, want rejected with reason %q", id, meta, reason)
			}
			if len(body) == 0 {
				t.Errorf("failed/%q lost its bytes", id)
			}
		}
	}
	runs := starts(a.cellEvents())
	for id, specID := range good {
		if !b.exists(b.key("completed", id)) {
			t.Errorf("completed/%q missing", id)
		}
		if runs[specID] != 1 {
			t.Errorf("spec %q ran %d times, want once", id, runs[specID])
		}
	}
	if n := a.logs.count(`"msg":"reject failed; will retry"`); n != 0 {
		t.Errorf("%d failed rejections, want none", n)
	}
}
