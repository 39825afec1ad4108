package e2e

// Hostile and overlong spec ids (issue 9): they are filed, left alone or
// refused, never mangled, and valid awkward ids run.

import (
	"bytes"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/cellos/fleetd/internal/store"
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
	if n := a.logs.countEvent("reject.failed"); n != 0 {
		t.Errorf("%d failed rejections, want none", n)
	}
}

// TestOverlongIDsLeftAlone: an id whose longest key (completed/) would be
// over S3's 1,024 bytes is not work, though its pending/ key is a valid S3
// key: left alone and logged once. versitygw's POSIX backend stores a key
// as a path whose parts are at most 255 bytes, so the length comes from a
// long prefix rather than a 1,000-byte id.
func TestOverlongIDsLeftAlone(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	b.base = "fleet"
	for _, c := range "pqrs" {
		b.base += "/" + strings.Repeat(string(c), 200)
	}
	// completed/ is two bytes longer than pending/.
	fits := strings.Repeat("f", store.MaxKeyBytes-len(b.base+"/completed/.json"))
	over := map[string]int{strings.Repeat("o", len(fits)+1): 1023, strings.Repeat("v", len(fits)+2): 1024}
	b.submit(fits, map[string]any{}, func(spec map[string]any) { spec["id"] = "fits" })
	for id, n := range over {
		b.submit(id, map[string]any{}, func(spec map[string]any) { spec["id"] = "over" })
		if got := len(b.key("pending", id)); got != n {
			t.Fatalf("pending/ key of %d bytes, want %d", got, n)
		}
	}

	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_PREFIX": b.base})
	b.waitCount("completed", 1)
	if got := len(b.key("completed", fits)); got != store.MaxKeyBytes {
		t.Errorf("completed/ key of the id that fits is %d bytes, want %d", got, store.MaxKeyBytes)
	}
	awaitPolls(t, a, 3)
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	for id := range over {
		key := b.key("pending", id)
		if !b.exists(key) {
			t.Errorf("pending/ key of %d bytes was taken", len(key))
		}
		lines := a.logs.eventsWith("lister.not_work", "key", key)
		if len(lines) != 1 || !strings.Contains(lines[0]["reason"].(string), "over S3's limit of 1024") {
			t.Errorf("pending/ key of %d bytes logged %d times (%v), want once with the reason", len(key), len(lines), lines)
		}
	}
	if got := starts(a.cellEvents()); len(got) != 1 || got["fits"] != 1 {
		t.Errorf("cells started = %v, want only the id that fits", got)
	}
	for _, state := range []string{"claimed", "leases", "failed"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("%s/ holds %d keys", state, len(left))
		}
	}
}

// TestSubmitRefusesOverlongIDs: submit refuses an id fleetd would leave alone,
// and uploads nothing.
func TestSubmitRefusesOverlongIDs(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	long := strings.Repeat("x", 1004) // fleet/completed/<id>.json: 1,025 bytes
	file := writeFile(t, "job.json", `{"spec":{"id":"`+long+`"}}`)
	for _, args := range [][]string{{"submit", file}, {"submit", "--id", long, writeFile(t, "short.json", `{"spec":{"id":"s"}}`)},
		{"submit", "--queue-name", "lane", "--id", strings.Repeat("y", 1000), file}} {
		code, _, errOut := runCLI(t, b, args...)
		if code != 1 || !strings.Contains(errOut, "too long for this queue") || !strings.Contains(errOut, "over S3's limit of 1024") {
			t.Errorf("submit of an overlong id = %d %q, want 1 and the limit named", code, errOut)
		}
	}
	// 1,003 bytes fit (though not in one part of a versitygw POSIX path, so
	// the upload itself fails here).
	if _, _, errOut := runCLI(t, b, "submit", "--id", strings.Repeat("z", 1003), file); strings.Contains(errOut, "too long for this queue") {
		t.Errorf("submit of a 1,003-byte id refused by the length check: %q", errOut)
	}
	if keys := b.keys("fleet/"); len(keys) != 0 {
		t.Errorf("submit wrote %d keys", len(keys))
	}
}
