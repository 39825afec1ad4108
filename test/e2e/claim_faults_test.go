package e2e

// Deterministic tests of issue 8's cases 1-7, 12 and 13: the claim protocol
// when S3 answers ambiguously, slowly or not at all. Each test puts a fault
// proxy between fleetd and versitygw, injects exactly one fault at one step of
// the protocol, and checks the queue's invariant directly against S3 (not
// through the proxy): every spec in exactly one of completed/ or failed/ with
// its bytes unchanged, nothing left in pending/, claimed/ or leases/, and each
// spec run once where no node died.

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
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
	"github.com/cellos/fleetd/internal/faultproxy"
)

// claimTTL is fast()'s lease ttl.
const claimTTL = 3 * time.Second

// claimAgent starts fleetd with fast() settings, talking to S3 through p
// (direct to versitygw when p is nil).
func claimAgent(t *testing.T, b *bucket, p *faultproxy.Proxy, node string, extra map[string]string) *agent {
	t.Helper()
	s := fast(map[string]string{"CELLOS_FLEET_NODE_ID": node})
	if p != nil {
		s["AWS_ENDPOINT_URL_S3"] = p.URL()
	}
	for k, v := range extra {
		s[k] = v
	}
	return startAgent(t, b, s)
}

// claimWaitEmpty waits until pending/, claimed/ and leases/ are empty: the
// last step of every ownership is a delete, so a finished spec's leftovers
// go shortly after its result appears.
func claimWaitEmpty(t *testing.T, b *bucket) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := map[string][]string{}
		for _, s := range []string{"pending", "claimed", "leases"} {
			if ids := b.ids(s); len(ids) > 0 {
				left[s] = ids
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind after 30s: %v", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// claimStop drains agents with SIGTERM and checks they exit 0 without a panic.
func claimStop(t *testing.T, agents ...*agent) {
	t.Helper()
	for _, a := range agents {
		select {
		case <-a.exited:
			continue
		default:
		}
		a.signal(syscall.SIGTERM)
	}
	for _, a := range agents {
		if code := a.wait(); code != 0 {
			t.Errorf("fleetd exit code %d", code)
		}
		// A crash is the Go runtime's panic text on stderr, not a JSON line with
		// an event (a recovered worker.panic has both), so the word is matched.
		if strings.Contains(a.logs.text(), "panic") {
			t.Errorf("fleetd logged a panic")
		}
	}
}

// claimRuns counts cell starts per spec id over agents.
func claimRuns(agents ...*agent) map[string]int {
	var all []cellEvent
	for _, a := range agents {
		all = append(all, a.cellEvents()...)
	}
	return starts(all)
}

// claimRunsOnce checks every id ran exactly once over agents.
func claimRunsOnce(t *testing.T, ids []string, agents ...*agent) {
	t.Helper()
	runs := claimRuns(agents...)
	for _, id := range ids {
		if runs[id] != 1 {
			t.Errorf("spec %s ran %d times, want once (runs %v)", id, runs[id], runs)
		}
	}
}

// claimLease reads a lease body straight from S3.
func claimLease(t *testing.T, b *bucket, id string) map[string]any {
	t.Helper()
	body, _ := b.get(b.key("leases", id))
	var l map[string]any
	if err := json.Unmarshal(body, &l); err != nil {
		t.Fatalf("lease %s: %v", id, err)
	}
	return l
}

// claimETag is the ETag S3 gives a single PUT of body, quoted as sent in If-Match.
func claimETag(body []byte) string {
	sum := md5.Sum(body)
	return `"` + hex.EncodeToString(sum[:]) + `"`
}

// recoveryEvents are the events of recovery settling another claim: a live
// claim must log none of them.
var recoveryEvents = []string{
	"lease.takeover", "recovery.read_lease_failed", "recovery.unreadable_lease",
	"recovery.lease_changed", "recovery.takeover_failed", "recovery.orphan_lease_failed",
	"recovery.late_claim_cleared", "recovery.orphan", "recovery.result_found",
	"recovery.never_started", "recovery.lease_removed", "recovery.read_claim_failed",
	"recovery.stopped",
}

// claimBadEvents checks that a logged none of recoveryEvents and none of more.
func claimBadEvents(t *testing.T, a *agent, more ...string) {
	t.Helper()
	for _, bad := range append(append([]string(nil), recoveryEvents...), more...) {
		if n := a.logs.countEvent(bad); n != 0 {
			t.Errorf("%d %q events", n, bad)
		}
	}
}

// claimLogTime is the time of the first log line of a with the event name.
func claimLogTime(t *testing.T, a *agent, name string) time.Time {
	t.Helper()
	lines := a.logs.events(name)
	if len(lines) == 0 {
		t.Fatalf("no %q event", name)
	}
	at, err := time.Parse(time.RFC3339Nano, lines[0]["time"].(string))
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// TestClaimReadsBackAConditionalPutWhoseAnswerWasLost: a conditional PUT that
// lands but whose answer is lost (500 after forwarding, or a reset after
// forwarding). The store's retry then gets 412 from our own write; the
// protocol must read the object back and carry on, not take it for another
// node's.
// From issue 8, case 1; was TestCase1_AmbiguousConditionalPut.
func TestClaimReadsBackAConditionalPutWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	type step struct {
		name   string
		rule   func(b *bucket) faultproxy.Rule
		test   map[string]any
		prompt bool // must complete well within a ttl of the fault
	}
	steps := []step{
		{"LeaseCreate", func(b *bucket) faultproxy.Rule {
			return faultproxy.Rule{Method: "PUT", Key: keyOf(b, "leases", "x"), Header: map[string]string{"If-None-Match": "*"}}
		}, map[string]any{}, true},
		// The cell outlives two renewals (every ttl/3 = 1 s); the first is hit.
		{"LeaseRenewal", func(b *bucket) faultproxy.Rule {
			return faultproxy.Rule{Method: "PUT", Key: sessionsOf(b), Header: map[string]string{"If-Match": ""}}
		}, map[string]any{"sleepMs": 2500}, false},
		{"ResultPut", func(b *bucket) faultproxy.Rule {
			return faultproxy.Rule{Method: "PUT", Key: keyOf(b, "completed", "x")}
		}, map[string]any{}, true},
	}
	faults := []struct {
		name   string
		action faultproxy.Action
		status int
	}{{"ErrorAfter500", faultproxy.ErrorAfter, 500}, {"ResetAfter", faultproxy.ResetAfter, 0}}
	for _, s := range steps {
		for _, f := range faults {
			t.Run(s.name+"/"+f.name, func(t *testing.T) {
				t.Parallel()
				b := newBucket(t)
				p := startProxy(t)
				rule := s.rule(b)
				rule.Action, rule.Status, rule.Times = f.action, f.status, 1
				h := p.Add(rule)
				body := b.submit("x", s.test)
				a := claimAgent(t, b, p, "n1", nil)
				awaitFired(t, h, 1)
				faulted := time.Now()
				b.waitCount("completed", 1)
				if took := time.Since(faulted); s.prompt && took >= claimTTL {
					t.Errorf("completed %v after the fault: blocked for a ttl", took)
				}
				claimWaitEmpty(t, b)
				claimStop(t, a)
				assertInvariant(t, b, map[string]finalState{"x": {"completed", body}})
				claimRunsOnce(t, []string{"x"}, a)
				claimBadEvents(t, a, "claim.conflict", "lease.lost", "spec.left_to_recovery")
			})
		}
	}
}

// TestClaimSettlesAPendingDeleteWhoseAnswerWasLost: the DELETE of pending/
// during the claim lands but is answered 503. The store's next attempt reads
// the key first (DeleteWritten) and finds it gone: the delete is settled
// without sending it again, however many more times the rule would have fired.
// The spec must not be lost, and runs once.
// From issue 8, case 2; was TestCase2_AmbiguousPendingDelete.
func TestClaimSettlesAPendingDeleteWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	for _, times := range []int{1, 5} {
		t.Run(fmt.Sprintf("Times%d", times), func(t *testing.T) {
			t.Parallel()
			b := newBucket(t)
			p := startProxy(t)
			h := p.Add(faultproxy.Rule{Method: "DELETE", Key: keyOf(b, "pending", "x"),
				Action: faultproxy.ErrorAfter, Status: 503, Times: times})
			body := b.submit("x", map[string]any{})
			a := claimAgent(t, b, p, "n1", map[string]string{"CELLOS_FLEET_S3_MAX_ATTEMPTS": "5"})
			awaitFired(t, h, 1)
			b.waitCount("completed", 1)
			claimWaitEmpty(t, b)
			claimStop(t, a)
			assertInvariant(t, b, map[string]finalState{"x": {"completed", body}})
			claimRunsOnce(t, []string{"x"}, a)
			// On MinIO the repeat is the same DELETE by version id, harmless.
			if n := h.Fired(); n != 1 && env.store != "minio" {
				t.Errorf("the DELETE of pending/ was sent %d times, want once: the next attempt reads first", n)
			}
		})
	}
}

// TestClaimSlowerThanTheTTLKeepsItsLease: the DELETE of pending/ that consumes
// the spec is held for longer than a ttl (until the two agents' sessions have
// been renewed 10 times, over the 4 s after which a session counts as stale)
// with a second agent running alongside, ready to recover. The lease must stay
// alive through the claim: no takeover, one run, completed, nothing left.
// From issue 8, case 3; was TestCase3_ClaimSlowerThanTTL.
func TestClaimSlowerThanTheTTLKeepsItsLease(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	hold := p.Add(faultproxy.Rule{Method: "DELETE", Key: keyOf(b, "pending", "x"), Action: faultproxy.Hold})
	renewals := p.Add(faultproxy.Rule{Method: "PUT", Key: sessionsOf(b), Header: map[string]string{"If-Match": ""}})
	body := b.submit("x", map[string]any{})
	a1 := claimAgent(t, b, p, "n1", nil)
	a2 := claimAgent(t, b, p, "n2", nil)
	awaitFired(t, hold, 1)
	token := claimLease(t, b, "x")["token"]
	awaitFired(t, renewals, 10)
	if got := claimLease(t, b, "x")["token"]; got != token {
		t.Errorf("lease token %v after 10 session renewals, want the claimer's %v: taken over mid-claim", got, token)
	}
	if !b.exists(b.key("pending", "x")) {
		t.Error("pending/x gone while its DELETE is held")
	}
	hold.Release()
	b.waitCount("completed", 1)
	claimWaitEmpty(t, b)
	claimStop(t, a1, a2)
	meta := assertInvariant(t, b, map[string]finalState{"x": {"completed", body}})
	if meta["x"]["fleetd-token"] != token {
		t.Errorf("completed/x written by token %q, want the claimer's %v", meta["x"]["fleetd-token"], token)
	}
	claimRunsOnce(t, []string{"x"}, a1, a2)
	for _, a := range []*agent{a1, a2} {
		if n := a.logs.countEvents(recoveryEvents...); n != 0 {
			t.Errorf("%d recovery log lines: the claim was recovered while alive", n)
		}
	}
}

// TestLateCleanupSparesAResubmission: the first run's DELETE of claimed/ is
// held past a ttl after its result is written; meanwhile x is resubmitted with
// other bytes. Nothing of the newer submission may be deleted by the late
// cleanup: both submissions run once each, the resubmission's result is the
// last, and nothing is left.
// From issue 8, case 4; was TestCase4_LateCleanup.
func TestLateCleanupSparesAResubmission(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	body1 := b.submit("x", map[string]any{"sleepMs": 0})
	etag1 := claimETag(body1)
	if head, err := env.client.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: &b.name, Key: aws.String(b.key("pending", "x"))}); err != nil || aws.ToString(head.ETag) != etag1 {
		t.Fatalf("pending/x ETag %v (%v), want %s", aws.ToString(head.ETag), err, etag1)
	}
	// Only deletes of the first submission's claimed/ are held: the
	// resubmission has other bytes, so another ETag (on MinIO every delete
	// of claimed/x is held, but the resubmission runs only after Release).
	rule := protocolDelete(keyOf(b, "claimed", "x"), etag1)
	rule.Action = faultproxy.Hold
	hold := p.Add(rule)
	renewals := p.Add(faultproxy.Rule{Method: "PUT", Key: sessionsOf(b), Header: map[string]string{"If-Match": ""}})
	a1 := claimAgent(t, b, p, "n1", nil)
	a2 := claimAgent(t, b, p, "n2", nil)
	awaitFired(t, hold, 1)
	got, meta1 := b.get(b.key("completed", "x"))
	if !bytes.Equal(got, body1) {
		t.Fatalf("completed/x = %q before the cleanup, want the first submission", got)
	}
	token1 := meta1["fleetd-token"]
	body2 := b.submit("x", map[string]any{"sleepMs": 1})
	// Held past a ttl: the two agents renew their sessions 8 more times.
	awaitFired(t, renewals, renewals.Fired()+8)
	if got, _ := b.get(b.key("pending", "x")); !bytes.Equal(got, body2) {
		t.Errorf("pending/x = %q while the old cleanup is held, want the resubmission", got)
	}
	if n := claimRuns(a1, a2)["x"]; n != 1 {
		t.Errorf("x ran %d times while the first run's lease is held, want 1", n)
	}
	hold.Release()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if got, _ := b.get(b.key("completed", "x")); bytes.Equal(got, body2) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the resubmission did not complete within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	claimWaitEmpty(t, b)
	claimStop(t, a1, a2)
	meta := assertInvariant(t, b, map[string]finalState{"x": {"completed", body2}})
	if meta["x"]["fleetd-token"] == token1 {
		t.Error("completed/x of the resubmission carries the first run's token")
	}
	if n := claimRuns(a1, a2)["x"]; n != 2 {
		t.Errorf("x ran %d times, want once per submission (2)", n)
	}
	for _, a := range []*agent{a1, a2} {
		claimBadEvents(t, a, "lease.lost", "spec.left_to_recovery")
	}
}

// TestHolderWhoseRenewalsFailStopsItsCellBeforeTakeover: every renewal of
// agent A's session is answered 503 (never forwarded) while its cell runs;
// agent B, talking to S3 directly, may recover the spec. A must stop its cell
// making progress — by default it freezes it, with CELLOS_FLEET_ON_LAPSE=stop
// it stops it — before B can end A's session and take the lease over, and must
// never write a result; once A reaches S3 again it learns of the takeover (a
// frozen cell is then killed, never thawed). The spec ends in completed/ once,
// written by a live lease, with nothing left.
// From issue 8, case 5; was TestCase5_RenewalsFailLongerThanTTL.
func TestHolderWhoseRenewalsFailStopsItsCellBeforeTakeover(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"freeze", "stop"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			b := newBucket(t)
			p := startProxy(t)
			release := filepath.Join(t.TempDir(), "release")
			body := b.submit("x", map[string]any{"waitFor": release})
			a := claimAgent(t, b, p, "a", map[string]string{"CELLOS_FLEET_ON_LAPSE": mode})
			a.logs.awaitEvent(t, "cell.started", 1)
			tokenA := claimLease(t, b, "x")["token"]
			fail := p.Add(faultproxy.Rule{Method: "PUT", Key: sessionsOf(b), Header: map[string]string{"If-Match": ""},
				Action: faultproxy.ErrorBefore, Status: 503})
			other := claimAgent(t, b, nil, "b", nil)
			held := map[string]string{"freeze": "cell.frozen", "stop": "cell.fenced"}[mode]
			a.logs.awaitEvent(t, held, 1)
			// From here on any run of x that makes progress ends at once.
			if err := os.WriteFile(release, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			other.logs.awaitEvent(t, "lease.takeover", 1)
			b.waitCount("completed", 1)
			if stopped, taken := claimLogTime(t, a, held), claimLogTime(t, other, "lease.takeover"); !stopped.Before(taken) {
				t.Errorf("A's cell was held (%s) at %v, after B took the lease over at %v", held, stopped, taken)
			}
			fail.Remove()
			// A learns it lost the lease once it can reach S3 again.
			a.logs.awaitEvent(t, "lease.lost", 1)
			if mode == "freeze" {
				a.logs.awaitEvent(t, "cell.killed", 1)
				if n := a.logs.countEvent("cell.thawed"); n != 0 {
					t.Errorf("A thawed its cell %d times after its spec was taken over", n)
				}
			}
			claimWaitEmpty(t, b)
			claimStop(t, a, other)
			meta := assertInvariant(t, b, map[string]finalState{"x": {"completed", body}})
			if meta["x"]["fleetd-token"] == tokenA {
				t.Errorf("completed/x written under A's lost lease (token %v)", tokenA)
			}
			t.Logf("completed/x written by node %s, attempt %s", meta["x"]["fleetd-node"], meta["x"]["fleetd-attempts"])
			// A's run was held by its own fencing; the spec ran once more.
			if n := claimRuns(a, other)["x"]; n != 2 {
				t.Errorf("x ran %d times, want 2 (A's held run and one more)", n)
			}
			if fail.Fired() == 0 {
				t.Error("no renewal was failed")
			}
		})
	}
}

// TestResultIsRetriedThroughAnOutage: the result PUT is answered 503 (never
// forwarded) 8 times: every attempt of the store's first call and 3 of the
// next. A finished cell's result is retried while the lease is kept alive
// until it is written: the spec runs once and completes.
// From issue 8, case 6; was TestCase6_FinalizeDuringOutage.
func TestResultIsRetriedThroughAnOutage(t *testing.T) {
	t.Parallel()
	const outage = 20
	b := newBucket(t)
	p := startProxy(t)
	fail := p.Add(faultproxy.Rule{Method: "PUT", Key: keyOf(b, "completed", "x"), Action: faultproxy.ErrorBefore, Status: 503, Times: outage})
	body := b.submit("x", map[string]any{})
	a := claimAgent(t, b, p, "n1", map[string]string{"CELLOS_FLEET_S3_MAX_ATTEMPTS": "5"})
	awaitFired(t, fail, outage)
	b.waitCount("completed", 1)
	claimWaitEmpty(t, b)
	claimStop(t, a)
	assertInvariant(t, b, map[string]finalState{"x": {"completed", body}})
	claimRunsOnce(t, []string{"x"}, a)
	if os.Getenv("CLAIM_DEBUG") != "" {
		t.Log(a.logs.text())
	}
	claimBadEvents(t, a, "lease.lost", "spec.left_to_recovery", "spec.released")
}

// claimPut writes an object with user metadata straight to S3.
func claimPut(t *testing.T, b *bucket, key string, body []byte, meta map[string]string) {
	t.Helper()
	_, err := env.client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: &b.name, Key: &key, Body: bytes.NewReader(body), Metadata: meta})
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// TestLeaselessClaimsAreClearedOrRun: claims without a lease, as a late write
// can leave behind (a claim deletes its lease only once the spec is settled,
// so a lease-less claimed/ with a fleetd token is such a write). (a) One whose
// result is already written is only cleared: never requeued, never run. (b)
// One that never consumed pending/ and whose attempt count is the maximum is
// not abandoned to failed/: the spec runs once and completes. The agent's peek
// of pending/ is held until recovery has settled the orphan, so recovery, not
// a fresh claim, meets it.
// From issue 8, case 7; was TestCase7_OrphanClaimRecovery.
func TestLeaselessClaimsAreClearedOrRun(t *testing.T) {
	t.Parallel()
	t.Run("AlreadyCompleted", func(t *testing.T) {
		t.Parallel()
		b := newBucket(t)
		p := startProxy(t)
		requeue := p.Add(faultproxy.Rule{Method: "PUT", Key: keyOf(b, "pending", "x")})
		body := []byte(`{"apiVersion":"cellos/v1","kind":"ExecutionCell","spec":{"id":"x","test":{}}}`)
		result := map[string]string{"fleetd-node": "gone", "fleetd-token": "t-old", "fleetd-outcome": "completed", "fleetd-attempts": "1"}
		claimPut(t, b, b.key("completed", "x"), body, result)
		claimPut(t, b, b.key("claimed", "x"), body, map[string]string{"fleetd-node": "gone", "fleetd-token": "t-old",
			"fleetd-attempts": "1", "fleetd-pending-etag": claimETag(body)})
		a := claimAgent(t, b, p, "n1", nil)
		a.logs.awaitEvent(t, "recovery.late_claim_cleared", 1)
		claimWaitEmpty(t, b)
		claimStop(t, a)
		meta := assertInvariant(t, b, map[string]finalState{"x": {"completed", body}})
		for k, v := range result {
			if meta["x"][k] != v {
				t.Errorf("completed/x metadata %s = %q, want %q (unchanged)", k, meta["x"][k], v)
			}
		}
		if n := requeue.Fired(); n != 0 {
			t.Errorf("a completed spec was written to pending/ %d times", n)
		}
		if n := claimRuns(a)["x"]; n != 0 {
			t.Errorf("a completed spec ran %d times", n)
		}
	})
	t.Run("NeverStartedAtMaxAttempts", func(t *testing.T) {
		t.Parallel()
		b := newBucket(t)
		p := startProxy(t)
		peek := p.Add(faultproxy.Rule{Method: "GET", Key: keyOf(b, "pending", "x"), Action: faultproxy.Hold})
		body := b.submit("x", map[string]any{})
		claimPut(t, b, b.key("claimed", "x"), body, map[string]string{"fleetd-node": "gone", "fleetd-token": "t-old",
			"fleetd-attempts": "3", "fleetd-pending-etag": claimETag(body)})
		a := claimAgent(t, b, p, "n1", map[string]string{"CELLOS_FLEET_MAX_ATTEMPTS": "3"})
		awaitFired(t, peek, 1)
		a.logs.awaitEvent(t, "recovery.late_claim_cleared", 1)
		peek.Release()
		b.waitCount("completed", 1)
		claimWaitEmpty(t, b)
		claimStop(t, a)
		meta := assertInvariant(t, b, map[string]finalState{"x": {"completed", body}})
		if got := meta["x"]["fleetd-attempts"]; got != "1" {
			t.Errorf("completed/x attempts = %q, want 1: the orphan's attempt never started", got)
		}
		claimRunsOnce(t, []string{"x"}, a)
		if n := a.logs.countEvent("claim.left"); n != 0 {
			t.Errorf("%d log lines about abandoning", n)
		}
	})
}

// TestRenewalAnswered412ByItsOwnWriteIsNoTakeover: a renewal of the agent's
// session lands and its answer is lost, and the read-back that would tell is
// answered 503 on every attempt. The holder's next renewal, If-Match the ETag
// it had, then gets 412 — from its own landed write. That is not a takeover:
// the cell must not be killed and the spec must run once.
// From issue 8, case 1 (the renewal's variant); was TestCase1_AmbiguousRenewalUnresolved.
func TestRenewalAnswered412ByItsOwnWriteIsNoTakeover(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	renewal := p.Add(faultproxy.Rule{Method: "PUT", Key: sessionsOf(b), Header: map[string]string{"If-Match": ""},
		Action: faultproxy.ErrorAfter, Status: 500, Times: 1})
	readBack := p.Add(faultproxy.Rule{Method: "GET", Key: sessionsOf(b), Action: faultproxy.ErrorBefore, Status: 503, Times: 2})
	body := b.submit("x", map[string]any{"sleepMs": 2500})
	// Two attempts a request, so the renewal and its read-back give up well
	// within the lease's validity and the next renewal meets the 412.
	a := claimAgent(t, b, p, "n1", map[string]string{"CELLOS_FLEET_S3_MAX_ATTEMPTS": "2"})
	awaitFired(t, renewal, 1)
	awaitFired(t, readBack, 1)
	b.waitCount("completed", 1)
	claimWaitEmpty(t, b)
	claimStop(t, a)
	assertInvariant(t, b, map[string]finalState{"x": {"completed", body}})
	claimRunsOnce(t, []string{"x"}, a)
	if os.Getenv("CLAIM_DEBUG") != "" {
		t.Log(a.logs.text())
	}
	claimBadEvents(t, a, "lease.lost", "spec.left_to_recovery",
		"cell.fenced", "spec.cancelled", "cell.drain_stopped", "cell.start_failed")
}

// TestReplacementDuringClaimIsKept: a replacement landing while the claim's
// DELETE of pending/ is in flight is not deleted: the claim deletes only the
// version it read, and the new version runs after the old one.
// From issue 8, case 12; was TestCase12ReplacementDuringClaimIsKept.
func TestReplacementDuringClaimIsKept(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	b.submit("r", map[string]any{"sleepMs": 0})
	rule := protocolDelete(keyOf(b, "pending", "r"), "")
	rule.Action, rule.Times = faultproxy.Hold, 1
	del := p.Add(rule)
	a := startAgent(t, b, caseBVia(p, nil))
	awaitFired(t, del, 1)
	// The new version is told apart by its run: it sleeps 700 ms.
	replaced := b.submit("r", map[string]any{"sleepMs": 700})
	del.Release()
	caseBPoll(t, "completed/r with the new bytes", func() bool {
		if !b.exists(b.key("completed", "r")) || len(b.ids("pending")) != 0 {
			return false
		}
		got, _ := b.get(b.key("completed", "r"))
		return bytes.Equal(got, replaced)
	})
	caseBStop(t, a)
	assertInvariant(t, b, map[string]finalState{"r": {"completed", replaced}})
	evs := a.cellEvents()
	if got := starts(evs); got["r"] != 2 {
		t.Fatalf("runs = %v, want r twice: the old version, then the new", got)
	}
	started := map[int]int64{}
	long := 0
	for _, e := range evs {
		switch e.what {
		case "start":
			started[e.pid] = e.at
		case "end":
			if time.Duration(e.at-started[e.pid]) >= 700*time.Millisecond {
				long++
			}
		}
	}
	if long != 1 {
		t.Errorf("%d runs of the new (700 ms) version, want 1", long)
	}
}

// TestRejectFilesOnlyTheJudgedVersion: a rejection files only the version it
// judged bad. Replaced while its failed/ write is held, the valid version is
// neither deleted nor filed with the old reason: it runs. An oversized spec
// with an awkward id is copied server-side to failed/ and leaves pending/.
// From issue 8, case 13; was TestCase13RejectActsOnJudgedVersionOnly.
func TestRejectFilesOnlyTheJudgedVersion(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	p := startProxy(t)
	b.putRaw(b.key("pending", "v"), []byte("not json"))
	write := p.Add(faultproxy.Rule{Method: "PUT", Key: keyOf(b, "failed", "v"), Action: faultproxy.Hold, Times: 1})
	a := startAgent(t, b, caseBVia(p, nil))
	awaitFired(t, write, 1)
	valid := b.submit("v", map[string]any{})
	write.Release()
	b.waitCount("completed", 1)
	caseBPoll(t, "an empty pending/ and leases/", func() bool { return len(b.ids("pending"))+len(b.ids("leases")) == 0 })
	caseBStop(t, a)
	if got, _ := b.get(b.key("completed", "v")); !bytes.Equal(got, valid) {
		t.Errorf("completed/v = %q, want the valid version", got)
	}
	if b.exists(b.key("failed", "v")) {
		// The bad version's own record may stand; the valid one must not be there.
		if got, meta := b.get(b.key("failed", "v")); string(got) != "not json" {
			t.Errorf("failed/v = %q %v: the valid version was filed as bad", got, meta)
		}
	}
	for _, state := range []string{"pending", "claimed", "leases"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("%s/ holds %v", state, left)
		}
	}
	if got := starts(a.cellEvents()); got["v"] != 1 {
		t.Errorf("runs = %v, want v once", got)
	}

	t.Run("oversized", func(t *testing.T) {
		t.Parallel()
		b := newBucket(t)
		p := startProxy(t)
		const id = "big %+ x"
		big := b.submit(id, map[string]any{"pad": strings.Repeat("x", 200)})
		a := startAgent(t, b, caseBVia(p, map[string]string{"CELLOS_FLEET_MAX_SPEC_BYTES": "100"}))
		b.waitCount("failed", 1)
		caseBPoll(t, "an empty leases/", func() bool { return len(b.ids("leases")) == 0 })
		caseBStop(t, a)
		assertInvariant(t, b, map[string]finalState{id: {"failed", big}})
		if _, meta := b.get(b.key("failed", id)); !strings.Contains(meta["fleetd-reason"], "over the limit of 100") {
			t.Errorf("failed/%s reason = %q", id, meta["fleetd-reason"])
		}
		if n := len(a.cellEvents()); n != 0 {
			t.Errorf("an oversized spec was run (%d events)", n)
		}
	})
}
