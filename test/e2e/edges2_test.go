package e2e

// Integration tests of hostile ids, long keys, submitted attempt counts, busy
// nodes' readiness and hosts that cannot start the supervisor (issue 9).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/cellos/fleetd/internal/queue"
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
	fits := strings.Repeat("f", queue.MaxKeyBytes-len(b.base+"/completed/.json"))
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
	if got := len(b.key("completed", fits)); got != queue.MaxKeyBytes {
		t.Errorf("completed/ key of the id that fits is %d bytes, want %d", got, queue.MaxKeyBytes)
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

// TestSubmittedAttemptsClamped: a submitter's fleetd-attempts metadata can
// neither deny a spec its run nor give it more than the maximum: each spec
// runs once, and its record counts at least 1 and at most the maximum runs.
func TestSubmittedAttemptsClamped(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	want := map[string]string{"neg": "1", "huge": "3", "junk": "1", "max": "3"}
	for id, attempts := range map[string]string{"neg": "-5", "huge": "999999", "junk": "many", "max": "3"} {
		body, _ := json.Marshal(map[string]any{"spec": map[string]any{"id": id}})
		_, err := env.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &b.name, Key: aws.String(b.key("pending", id)),
			Body: bytes.NewReader(body), Metadata: map[string]string{"fleetd-attempts": attempts}})
		if err != nil {
			t.Fatal(err)
		}
	}
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_MAX_ATTEMPTS": "3"})
	b.waitCount("completed", len(want))
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	runs := starts(a.cellEvents())
	for id, n := range want {
		if runs[id] != 1 {
			t.Errorf("spec %s ran %d times, want once", id, runs[id])
		}
		if _, meta := b.get(b.key("completed", id)); meta["fleetd-attempts"] != n || meta["fleetd-outcome"] != "completed" {
			t.Errorf("completed/%s metadata = %v, want fleetd-attempts %s", id, meta, n)
		}
	}
}

// TestBusyNodeStaysReady: a node at capacity with a backlog keeps polling
// and stays ready. Each poll shows as fleetd_last_poll_success_timestamp_seconds
// advancing; /readyz answers 200 at every step over several poll intervals.
func TestBusyNodeStaysReady(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	release := filepath.Join(t.TempDir(), "release")
	b.submit("long", map[string]any{"waitFor": release})
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_CONCURRENCY": "1", "CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0"})
	addr := metricsAddr(t, a)
	a.logs.awaitEvent(t, "cell.started", 1)
	for i := range 5 {
		b.submit(fmt.Sprintf("backlog-%d", i), map[string]any{})
	}
	const interval = 0.2 // CELLOS_FLEET_POLL_INTERVAL_MS of the harness, in seconds
	start := float64(time.Now().UnixNano()) / 1e9
	deadline := time.Now().Add(60 * time.Second)
	advances, last := 0, 0.0
	// Polling the metric is how an observer sees polls; each step checks
	// readiness, so a gap in polling long enough to fail it would show.
	for last < start+8*interval {
		if time.Now().After(deadline) {
			t.Fatalf("last poll %.3f, want past %.3f within 60s", last, start+8*interval)
		}
		if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
			t.Fatalf("/readyz = %d %q on a busy node", code, body)
		}
		if got := sample(t, scrape(t, addr), "fleetd_last_poll_success_timestamp_seconds"); got > last {
			if last > start {
				advances++
			}
			last = got
		}
		time.Sleep(20 * time.Millisecond)
	}
	if advances < 4 {
		t.Errorf("last poll advanced %d times over 8 poll intervals at capacity, want about one per interval", advances)
	}
	fams := scrape(t, addr)
	if got := sample(t, fams, "fleetd_cells_in_flight"); got != 1 {
		t.Errorf("cells in flight = %v, want 1: the node was not at capacity", got)
	}
	if got := len(b.ids("pending")); got != 5 {
		t.Errorf("pending/ holds %d specs, want the backlog of 5", got)
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b.waitCount("completed", 6)
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestBrokenHostDoesNotEatTheQueue: a host whose supervisor lost its run bit
// after startup returns every spec it claims to pending/ unharmed, stops
// claiming and says so (/readyz, a metric, one log line), while a healthy
// node on the same queue runs every spec; once the binary is fixed, the
// broken node claims again by itself.
func TestBrokenHostDoesNotEatTheQueue(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	sup := filepath.Join(t.TempDir(), "supervisor")
	bin, err := os.ReadFile(env.supervisor)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sup, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// Executable when fleetd checks it at startup, not when it runs a spec.
	broken := startAgent(t, b, map[string]string{"CELLOS_FLEET_SUPERVISOR": sup, "CELLOS_FLEET_NODE_ID": "broken",
		"CELLOS_FLEET_CONCURRENCY": "2", "CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0"})
	addr := metricsAddr(t, broken)
	if err := os.Chmod(sup, 0o644); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		b.submit(fmt.Sprintf("s-%02d", i), map[string]any{})
	}
	broken.logs.awaitEvent(t, "host.broken", 1)
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 503 || !strings.Contains(body, "supervisor cannot be started") || !strings.Contains(body, "permission denied") {
		t.Errorf("/readyz of the broken node = %d %q, want 503 with the reason", code, body)
	}
	fams := scrape(t, addr)
	if got := sample(t, fams, "fleetd_host_broken"); got != 1 {
		t.Errorf("fleetd_host_broken = %v, want 1", got)
	}
	if got := sample(t, fams, "fleetd_supervisor_start_failures_total"); got < 1 {
		t.Errorf("fleetd_supervisor_start_failures_total = %v, want at least 1", got)
	}

	healthy := startAgent(t, b, map[string]string{"CELLOS_FLEET_NODE_ID": "healthy", "CELLOS_FLEET_CONCURRENCY": "4"})
	b.waitCount("completed", n)
	healthy.signal(syscall.SIGTERM)
	if code := healthy.wait(); code != 0 {
		t.Fatalf("healthy node exit code %d", code)
	}
	if failed := b.ids("failed"); len(failed) != 0 {
		t.Errorf("failed/ holds %v", failed)
	}
	for _, id := range b.ids("completed") {
		// The broken node's tries did not count against the spec.
		if _, meta := b.get(b.key("completed", id)); meta["fleetd-node"] != "healthy" || meta["fleetd-attempts"] != "1" {
			t.Errorf("completed/%s metadata = %v, want run once by healthy", id, meta)
		}
	}
	if lines := broken.logs.countEvent("host.broken"); lines != 1 {
		t.Errorf("%d lines say the host is broken, want 1", lines)
	}
	if code, _ := httpGet(t, "http://"+addr+"/readyz"); code != 503 {
		t.Errorf("/readyz of the broken node = %d after the queue emptied, want 503", code)
	}

	// Fixed: the node's next try starts the supervisor, and it takes work again.
	if err := os.Chmod(sup, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		b.submit(fmt.Sprintf("after-%d", i), map[string]any{})
	}
	b.waitCount("completed", n+3)
	broken.logs.awaitEvent(t, "host.recovered", 1)
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
		t.Errorf("/readyz of the fixed node = %d %q, want 200", code, body)
	}
	if got := sample(t, scrape(t, addr), "fleetd_host_broken"); got != 0 {
		t.Errorf("fleetd_host_broken = %v after the fix, want 0", got)
	}
	if got := starts(broken.cellEvents()); len(got) != 3 {
		t.Errorf("the fixed node ran %v, want the 3 new specs", got)
	}
	broken.signal(syscall.SIGTERM)
	if code := broken.wait(); code != 0 {
		t.Fatalf("broken node exit code %d", code)
	}
}
