package e2e

// Adversarial scenarios against the claim protocol: each one is a sequence of
// S3 answers (and, where it takes one, a kill) that broke the invariant —
// every spec ends in exactly one of completed/ or failed/, runs once unless a
// node died holding it, nothing left in pending/, claimed/ or leases/.

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/faultproxy"
)

// advSettings: an agent behind the proxy with a 3 s lease.
func advSettings(proxy *faultproxy.Proxy, node string, extra map[string]string) map[string]string {
	m := fast(map[string]string{
		"AWS_ENDPOINT_URL_S3":          proxy.URL(),
		"CELLOS_FLEET_NODE_ID":         node,
		"CELLOS_FLEET_S3_TIMEOUT_MS":   "2000",
		"CELLOS_FLEET_S3_MAX_ATTEMPTS": "3",
	})
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// waitSettled waits until pending/, claimed/ and leases/ are empty and id
// has a result.
func (b *bucket) waitSettled(id string) {
	b.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		left := len(b.ids("pending")) + len(b.ids("claimed")) + len(b.ids("leases"))
		if left == 0 && (b.exists(b.key("completed", id)) || b.exists(b.key("failed", id))) {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s not settled after 90s: pending %v claimed %v leases %v", id, b.ids("pending"), b.ids("claimed"), b.ids("leases"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *bucket) assertClean() {
	b.t.Helper()
	for _, state := range []string{"pending", "claimed", "leases"} {
		if left := b.ids(state); len(left) != 0 {
			b.t.Errorf("%s/ holds %v", state, left)
		}
	}
}

// TestAdversarialRenewalLandsUnseen: a renewal lands and its answer is lost
// (reset after forwarding); the SDK-level retry gets 412 from that very write,
// and the read-back that would tell fails (503). The keeper retries from the
// ETag it knew and gets a definite 412 — from its own write — and took that
// for a takeover: a healthy cell was killed, and recovery ran the spec again
// with no node dead.
func TestAdversarialRenewalLandsUnseen(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	proxy := startProxy(t)
	release := filepath.Join(t.TempDir(), "release")
	b.submit("r", map[string]any{"waitFor": release})
	// A ttl of 6 s, not 3: the window a renewal buys must hold the three
	// failed read-backs and their backoff on a loaded machine, or the keeper
	// rightly stops its cell for want of time, which is not what this tests.
	a := startAgent(t, b, advSettings(proxy, "a", map[string]string{"CELLOS_FLEET_LEASE_TTL_MS": "6000"}))
	a.logs.awaitEvent(t, "cell.started", 1)

	// The agent's one heartbeat: its session, renewed for every lease.
	session := sessionsOf(b)
	proxy.Add(faultproxy.Rule{Method: "PUT", Key: session, Header: map[string]string{"If-Match": ""}, Action: faultproxy.ResetAfter, Times: 1})
	readBack := proxy.Add(faultproxy.Rule{Method: "GET", Key: session, Action: faultproxy.ErrorBefore, Status: 503, Times: 3})
	renewals := proxy.Add(faultproxy.Rule{Method: "PUT", Key: session, Header: map[string]string{"If-Match": ""}, Action: faultproxy.Pass})
	awaitFired(t, readBack, 3) // read-back of the renewal
	// The renewal after the failed one, and two more: a keeper that kept the
	// lease renews every ttl/3.
	awaitFired(t, renewals, 4)
	completeOnce(t, b, a, "r", release)
	if n := a.logs.countEvent("lease.lost"); n != 0 {
		t.Errorf("the node took its own late renewal for a takeover (%d lines)", n)
	}
}

// completeOnce lets the cell of spec id (waiting for release) end, stops the
// agent, and checks the spec ran once and completed, with nothing left behind.
func completeOnce(t *testing.T, b *bucket, a *agent, id, release string) {
	t.Helper()
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b.waitSettled(id)
	a.signal(syscall.SIGTERM)
	a.wait()
	if got := starts(a.cellEvents()); got[id] != 1 {
		t.Errorf("spec %s ran %d times with no node dead, want 1", id, got[id])
	}
	if !b.exists(b.key("completed", id)) || b.exists(b.key("failed", id)) {
		t.Errorf("completed %v failed %v, want completed only", b.ids("completed"), b.ids("failed"))
	}
	b.assertClean()
}

// TestAdversarialRenewalHangs: S3 stops answering one renewal (the proxy
// holds it; an attempt may take 20 s, longer than the lease's validity). The
// keeper gives it up with half the validity left and renews again, and the
// cell is not stopped. Found by the soak: the store's retries and SlowDown
// pause held a renewal past the validity after an outage, and a healthy cell
// was stopped and ran twice with no node dead.
func TestAdversarialRenewalHangs(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	proxy := startProxy(t)
	release := filepath.Join(t.TempDir(), "release")
	b.submit("h", map[string]any{"waitFor": release})
	a := startAgent(t, b, advSettings(proxy, "a", map[string]string{
		"CELLOS_FLEET_LEASE_TTL_MS":  "6000",
		"CELLOS_FLEET_S3_TIMEOUT_MS": "20000",
	}))
	a.logs.awaitEvent(t, "cell.started", 1)

	session := sessionsOf(b)
	renewal := map[string]string{"If-Match": ""}
	hung := proxy.Add(faultproxy.Rule{Method: "PUT", Key: session, Header: renewal, Action: faultproxy.Hold, Times: 1})
	renewals := proxy.Add(faultproxy.Rule{Method: "PUT", Key: session, Header: renewal, Action: faultproxy.Pass})
	awaitFired(t, hung, 1) // the hung renewal
	// Three renewals after it: 6 s at ttl/3, past the validity the hung one
	// would have let lapse.
	awaitFired(t, renewals, 3)
	completeOnce(t, b, a, "h", release)
	if n := a.logs.countEvents("cell.fenced", "cell.frozen"); n != 0 {
		t.Errorf("the cell was stopped or frozen for want of a renewal while S3 answered (%d lines)", n)
	}
}

// TestAdversarialRecoveryChainForgetsTheResult: node h writes its result
// (failed: its cell timed out) and dies before clearing claimed/ and the
// lease. Recoverer r takes the lease over and dies before settling. Recoverer
// r2 takes over from r and looks for a result under r's token only: it finds
// none, returns the spec to pending/ and it runs again — and completes. The
// spec is in both failed/ and completed/.
func TestAdversarialRecoveryChainForgetsTheResult(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	proxy := startProxy(t)
	release := filepath.Join(t.TempDir(), "release")
	b.submit("c", map[string]any{"waitFor": release})

	clearClaimed := proxy.Add(faultproxy.Rule{Method: "DELETE", Key: regexp.MustCompile(`^fleet/claimed/c\.json$`), Action: faultproxy.Hold})
	h := startAgent(t, b, advSettings(proxy, "h", map[string]string{"CELLOS_FLEET_CELL_TIMEOUT_MS": "300"}))
	awaitFired(t, clearClaimed, 1) // h clearing claimed/
	h.crash()
	if !b.exists(b.key("failed", "c")) {
		t.Fatal("h's result is not in failed/")
	}

	settle := proxy.Add(faultproxy.Rule{Method: "HEAD", Key: regexp.MustCompile(`^fleet/pending/c\.json$`), Action: faultproxy.Hold})
	r := startAgent(t, b, advSettings(proxy, "r", nil))
	r.logs.awaitEvent(t, "lease.takeover", 1)
	awaitFired(t, settle, 1) // r settling
	r.crash()
	proxy.Clear()

	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r2 := startAgent(t, b, advSettings(proxy, "r2", nil))
	r2.logs.awaitEvent(t, "lease.takeover", 1)
	b.waitSettled("c")
	r2.signal(syscall.SIGTERM)
	r2.wait()
	if b.exists(b.key("completed", "c")) {
		t.Errorf("spec c is in both failed/ and completed/")
	}
	if got := starts(r2.cellEvents()); got["c"] != 0 {
		t.Errorf("spec c ran again %d times after its result was written", got["c"])
	}
	b.assertClean()
}

// TestAdversarialLateClaimedWriteRefused: a claim's write of claimed/ is held
// past the claimer's patience; the retry lands, the spec (v1) runs and
// completes, and a resubmission (v2) runs and completes. Then the held write
// arrives. Header-signed, it landed as a lease-less claimed/ of v1 that orphan
// recovery returned to pending/: v1 ran a second time with no node dead and
// its result replaced v2's. Signed with an expiry at its attempt's deadline,
// it is refused by the store (docs/PROTOCOL.md, "Requests that cannot land
// late").
func TestAdversarialLateClaimedWriteRefused(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	proxy := startProxy(t)
	held := proxy.Add(faultproxy.Rule{Method: "PUT", Key: regexp.MustCompile(`^fleet/claimed/o\.json$`),
		Action: faultproxy.Hold, Outlive: true, Times: 1})
	b.submit("o", map[string]any{"sleepMs": 0})
	a := startAgent(t, b, advSettings(proxy, "a", nil))
	awaitFired(t, held, 1) // claimed/ write
	b.waitCount("completed", 1)
	b.waitSettled("o")
	v2 := b.submit("o", map[string]any{"sleepMs": 1})
	a.logs.awaitEvent(t, "spec.finished", 2)
	b.waitSettled("o")

	held.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	statuses, err := held.Forwarded(ctx, 1)
	if err != nil {
		t.Fatalf("the held claimed/ write was never forwarded: %v", err)
	}
	if statuses[0] != http.StatusForbidden || b.exists(b.key("claimed", "o")) {
		t.Errorf("the late claimed/ write answered %d; want 403, nothing written", statuses[0])
	}
	a.signal(syscall.SIGTERM)
	a.wait()
	if got := starts(a.cellEvents()); got["o"] != 2 {
		t.Errorf("spec o ran %d times for 2 submissions, want 2", got["o"])
	}
	if got, _ := b.get(b.key("completed", "o")); string(got) != string(v2) {
		t.Errorf("completed/o = %s, want the last submission %s", got, v2)
	}
	b.assertClean()
}

// TestAdversarialLateDeleteSparesAResubmission (issue 18, item 4): the
// claim's DELETE pending/ If-Match E0 is held past the claimer's patience; its
// retry deletes, the spec runs and completes, the node stops. The same bytes
// are submitted again — the same ETag — and then the held DELETE arrives.
// Header-signed it deleted the resubmission unseen (2 submissions, 1 run);
// signed with an expiry at its attempt's deadline the store refuses it.
func TestAdversarialLateDeleteSparesAResubmission(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	proxy := startProxy(t)
	held := proxy.Add(faultproxy.Rule{Method: "DELETE", Key: regexp.MustCompile(`^fleet/pending/o\.json$`),
		Action: faultproxy.Hold, Outlive: true, Times: 1})
	v1 := b.submit("o", map[string]any{"sleepMs": 0})
	a := startAgent(t, b, advSettings(proxy, "a", nil))
	awaitFired(t, held, 1)
	b.waitSettled("o")
	a.signal(syscall.SIGTERM)
	a.wait()

	if v2 := b.submit("o", map[string]any{"sleepMs": 0}); string(v2) != string(v1) {
		t.Fatalf("resubmission %s differs from %s: the ETags would too", v2, v1)
	}
	held.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	statuses, err := held.Forwarded(ctx, 1)
	if err != nil {
		t.Fatalf("the held DELETE was never forwarded: %v", err)
	}
	if statuses[0] != http.StatusForbidden || !b.exists(b.key("pending", "o")) {
		t.Fatalf("the late DELETE answered %d, pending/o exists: %v; want 403 and the resubmission kept",
			statuses[0], b.exists(b.key("pending", "o")))
	}
	c := startAgent(t, b, advSettings(proxy, "c", nil))
	b.waitSettled("o")
	c.signal(syscall.SIGTERM)
	c.wait()
	if runs := starts(a.cellEvents())["o"] + starts(c.cellEvents())["o"]; runs != 2 {
		t.Errorf("spec o ran %d times for 2 submissions, want 2", runs)
	}
	b.assertClean()
}
