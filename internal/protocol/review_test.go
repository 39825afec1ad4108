package protocol

// Found by an adversarial review of the intents: each TestReview… test is a
// sequence of S3 answers, stopped holders and operator actions that broke the
// first version of them (an identical resubmission taken for the version
// judged; a cancel mark accepted by a holder that then ended without it).

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// hookStore is a faultStore whose requests a test can see before they are
// made: before may act (another tool, a submission) and may refuse the
// request (an error: the request does not land).
type hookStore struct {
	*faultStore
	mu     sync.Mutex
	before func(op, key string) error
}

func (h *hookStore) hook(op, key string) error {
	h.mu.Lock()
	f := h.before
	h.mu.Unlock()
	if f == nil {
		return nil
	}
	return f(op, key)
}

func (h *hookStore) setBefore(f func(op, key string) error) {
	h.mu.Lock()
	h.before = f
	h.mu.Unlock()
}

func (h *hookStore) Get(ctx context.Context, key string, limit int64) (store.Object, error) {
	if err := h.hook("GET", key); err != nil {
		return store.Object{}, err
	}
	return h.faultStore.Get(ctx, key, limit)
}

func (h *hookStore) Head(ctx context.Context, key string) (store.Object, error) {
	if err := h.hook("HEAD", key); err != nil {
		return store.Object{}, err
	}
	return h.faultStore.Head(ctx, key)
}

func (h *hookStore) Put(ctx context.Context, key string, body []byte, opt store.PutOptions) (string, error) {
	if err := h.hook("PUT", key); err != nil {
		return "", err
	}
	return h.faultStore.Put(ctx, key, body, opt)
}

func (h *hookStore) Delete(ctx context.Context, key, ifMatch string) error {
	if err := h.hook("DELETE", key); err != nil {
		return err
	}
	return h.faultStore.Delete(ctx, key, ifMatch)
}

func (h *hookStore) DeleteWritten(ctx context.Context, key string, v store.Version) error {
	return h.Delete(ctx, key, v.ETag)
}

func (h *hookStore) Copy(ctx context.Context, src, dst string, opt store.CopyOptions) error {
	if err := h.hook("COPY", dst); err != nil {
		return err
	}
	return h.faultStore.Copy(ctx, src, dst, opt)
}

// ageLease makes the lease of id look as a holder that stopped long ago left it.
func ageLease(p *Protocol, s *faultStore, id string) {
	key := p.cfg.Layout.Key(store.Leases, id)
	o, _ := s.object(key)
	s.PutAt(key, o.Body, o.Metadata, time.Now().Add(-MinTTL-2*time.Second))
}

// TestReviewFilingSuccessorDeletesAnIdenticalResubmission: `fleetd cancel`
// of a pending spec files it and deletes pending/, then S3 stops answering
// before the lease's delete lands (or the tool is killed there): the tool
// still reports Filed, and leaves its file-intent lease. The operator submits
// the same file again (pending/ is empty, claimed/ too: a plain submit
// succeeds). No node can claim it while the lease stands; the recoverer that
// finishes the filing then deletes pending/ If-Match the judged ETag — the
// MD5 of the same bytes — and the resubmission is gone: never run, never filed.
func TestReviewFilingSuccessorDeletesAnIdenticalResubmission(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	leaseKey := p.cfg.Layout.Key(store.Leases, "a")
	h := &hookStore{faultStore: s}
	// Once pending/ is gone, every request about the lease goes unanswered.
	h.setBefore(func(op, key string) error {
		if key == leaseKey && !s.has(spec.Key) {
			return fmt.Errorf("%s %s: %w: 503", op, key, store.ErrUnknown)
		}
		return nil
	})
	res, err := New(p.cfg, h).Cancel(context.Background(), "a", "alice")
	if err != nil || !res.Filed {
		t.Fatalf("Cancel = %+v, %v; want it reported filed", res, err)
	}
	h.setBefore(nil)
	if !s.has(leaseKey) {
		t.Fatal("precondition: the tool's lease should be left behind")
	}

	// The operator submits the same file again: pending/ and claimed/ are
	// empty, so `fleetd submit` accepts it.
	if _, err := s.Put(context.Background(), spec.Key, spec.Body, store.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	// Meanwhile the fleet cannot claim it: the filing's lease holds the id.
	if _, err := New(p.cfg, s).Claim(context.Background(), make(chan struct{}), spec); err == nil {
		t.Fatal("precondition: a claim should find the id held")
	}
	ageLease(p, s, "a")
	recoverNow(t, New(p.cfg, s))
	if !s.has(spec.Key) {
		t.Errorf("objects after recovery = %v: the resubmission was deleted unrun by the filing's successor "+
			"(it compared pending/'s ETag — the bytes — with the version it judged)", sortedKeys(s))
	}
}

// TestReviewCancelMarkFilesAnIdenticalResubmission: node A dies running a
// spec (pending/ consumed). The operator cancels it — the mark lands on A's
// lease, "node A stops it" — and then submits the same file again with
// --replace (claimed/ is still there, so a plain submit refuses). Recovery
// compares pending/'s ETag with the lease's pending_etag, finds them equal
// (same bytes), decides the claim "never started", and files the
// *resubmission* cancelled: the spec submitted after the cancel never runs.
func TestReviewCancelMarkFilesAnIdenticalResubmission(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	// LastModified is to the second, in s3mem as on S3: the first submission
	// is made a second older, or the resubmission below would be the same
	// version (docs/PROTOCOL.md: what is left).
	s.PutAt(spec.Key, spec.Body, nil, time.Now().Add(-time.Second))
	o, _ := s.object(spec.Key)
	spec.Modified = o.LastModified
	c, err := p.Claim(context.Background(), make(chan struct{}), spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.renew(context.Background()); err != nil { // the keeper's first renewal: the lease says running
		t.Fatal(err)
	}
	c.Drop() // node A dies while the cell runs
	res, err := New(p.cfg, s).Cancel(context.Background(), "a", "bob")
	if err != nil || res.Node != "n1" {
		t.Fatalf("Cancel = %+v, %v; want node n1 asked", res, err)
	}
	// submit --replace of the same file.
	if _, err := s.Put(context.Background(), spec.Key, spec.Body, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ageLease(p, s, "a")
	r := New(p.cfg, s)
	r.cfg.Node = "n2"
	recoverNow(t, r)
	got := sortedKeys(s)
	if !slices.Contains(got, spec.Key) {
		t.Errorf("objects after recovery = %v: the resubmission made after the cancel was filed cancelled "+
			"instead of the run the mark was for", got)
	}
}

// TestReviewCancelMarkDroppedByRecoveryOfAnUnconsumedClaim: a claimer died
// before consuming pending/; a recoverer takes its lease over (intent run,
// state recovering), checks for a mark (none), and clears the claim. In
// between, `fleetd cancel` finds the spec pending but held, marks the
// recoverer's lease (markCancel accepts a run lease in state recovering) and
// reports "node n1 stops it". The recoverer's lease delete meets the mark
// (412), reads it, and deletes the lease anyway: the mark is dropped, and
// pending/ runs to completed/.
func TestReviewCancelMarkDroppedByRecoveryOfAnUnconsumedClaim(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	staleClaim(t, p, s, spec, 1) // lease + claimed/, pending/ never consumed
	claimedKey := p.cfg.Layout.Key(store.Claimed, "a")
	h := &hookStore{faultStore: s}
	var once sync.Once
	var res CancelResult
	var cerr error
	h.setBefore(func(op, key string) error {
		if op == "DELETE" && key == claimedKey {
			once.Do(func() { res, cerr = New(p.cfg, s).Cancel(context.Background(), "a", "bob") })
		}
		return nil
	})
	recoverNow(t, New(p.cfg, h))
	if cerr != nil || res.Node == "" {
		t.Fatalf("Cancel = %+v, %v; want a holder asked", res, cerr)
	}
	if got, want := sortedKeys(s), []string{"fleet/failed/a.json"}; !slices.Equal(got, want) {
		t.Errorf("objects after recovery = %v, want %v: cancel reported \"node %s stops it\", but the mark was "+
			"deleted with the lease and the spec stays pending to run", got, want, res.Node)
	}
}

// TestReviewCancelMarkDroppedByAClaimThatGivesUp: node A holds a claiming
// lease for version E0 and is confirming pending/. The operator replaces the
// spec (submit --replace, E1) and cancels it. A mark on a claiming lease could
// go with it when A gives the claim up (its confirm sees E1 ≠ E0), and E1,
// the version the operator cancelled, would stay pending and run: so cancel
// does not mark a claiming lease; it waits, and files E1 once A has let go.
func TestReviewCancelMarkDroppedByAClaimThatGivesUp(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	h := &hookStore{faultStore: s}
	var once sync.Once
	type result struct {
		res CancelResult
		err error
	}
	cancelled := make(chan result, 1)
	h.setBefore(func(op, key string) error {
		if op == "HEAD" && key == spec.Key {
			once.Do(func() {
				if _, err := s.Put(context.Background(), spec.Key, []byte(`{"spec":{"id":"a","v":2}}`), store.PutOptions{}); err != nil {
					t.Error(err)
				}
				go func() {
					res, err := New(p.cfg, s).Cancel(context.Background(), "a", "bob")
					cancelled <- result{res, err}
				}()
			})
		}
		return nil
	})
	if _, err := New(p.cfg, h).Claim(context.Background(), make(chan struct{}), spec); err == nil {
		t.Fatal("precondition: the claim should give up on a replaced pending/")
	}
	if r := <-cancelled; r.err != nil || !r.res.Filed {
		t.Fatalf("Cancel = %+v, %v; want the replaced version filed once the claim let go", r.res, r.err)
	}
	if got, want := sortedKeys(s), []string{"fleet/failed/a.json"}; !slices.Equal(got, want) {
		t.Errorf("objects after the claim gave up = %v, want %v", got, want)
	}
}

// TestReviewCancelMarkDroppedWhenTheFilingRecovererStops: a claimer died
// before consuming pending/ and `fleetd cancel` marked its lease ("node A
// stops it"). Recoverer R1 honours the mark: it turns the lease into a
// filing (intent file, the mark kept) and clears claimed/ — and stops there,
// before its copy to failed/ (a crash, an outage past its window). R2 takes
// the filing over; finishFile finds no record in failed/ and reads that as
// "the filing wrote nothing: undo", deleting the lease, mark and all. pending/
// is judged again, passes the gate and runs: the confirmed cancel is dropped.
func TestReviewCancelMarkDroppedWhenTheFilingRecovererStops(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	run := leaseBody{Node: "dead", Token: "t1", Epoch: 1, Intent: intentRun, State: stateClaiming,
		PendingETag: spec.ETag, Attempts: 1, Cancel: "bob"}
	// What R1 wrote before it stopped: the successor, turned to a filing.
	r1 := run.successor("r1", "t2", MinTTL)
	r1.Intent, r1.State = intentFile, stateRejecting
	staleLease(p, s, "a", r1)
	recoverNow(t, p)
	got := sortedKeys(s)
	if o, ok := s.object("fleet/failed/a.json"); !ok || o.Metadata[metaOutcome] != string(Cancelled) || slices.Contains(got, spec.Key) {
		t.Errorf("objects after R2's recovery = %v, want only failed/a.json (cancelled): the filing that carried "+
			"bob's mark was undone and the spec is left pending to run", got)
	}
}

// TestStateWriteIsNotTakenForAnEarlierRenewal (found by the simulator: seed
// 422354 of a 1,000,000-scenario sweep): a renewal lands with its answer lost
// and is never read back, so its nonce stays unknown and the holder's ETag
// stays the one before it. The release's "releasing" write, If-Match that
// ETag, then gets 412 from the renewal, and the read-back finds a write of
// ours: it was taken for the releasing write, though the lease said
// "running". The release wrote pending/ with its lease saying nothing of it;
// recovery took that pending/ for a resubmission, filed the spec cancelled
// (a mark was on the lease) and ran it again. A write is done only when the
// lease holds that write.
func TestStateWriteIsNotTakenForAnEarlierRenewal(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	c, err := p.Claim(context.Background(), make(chan struct{}), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()
	c.writeMu.Lock() // the keeper waits
	defer c.writeMu.Unlock()
	// Our renewal lands; its answer is lost and it is never read back.
	c.mu.Lock()
	l, before := c.lease, c.etag
	c.mu.Unlock()
	body, nonce := encodeLease(&l, time.Now())
	renewal, err := s.Store.Put(context.Background(), c.key, body, store.PutOptions{IfMatch: before})
	if err != nil {
		t.Fatal(err)
	}
	c.unknown = append(c.unknown, leaseWrite{nonce: nonce, sent: time.Now()})

	releasing := l
	releasing.State, releasing.Released = stateReleasing, true
	err = c.writeLease(context.Background(), releasing, before)
	if err == nil {
		t.Fatal("the releasing write was taken as written, but the lease holds the earlier renewal")
	}
	if definite(err) {
		t.Fatalf("writeLease = %v: want an error to retry on, not a definite one", err)
	}
	if c.etag != renewal {
		t.Fatalf("holder went on from %s, want the renewal's ETag %s", c.etag, renewal)
	}
	if err := c.writeLease(context.Background(), releasing, c.etag); err != nil {
		t.Fatalf("the retry: %v", err)
	}
	got, _, err := p.readLease(context.Background(), c.key, c.token)
	if err != nil || got.State != stateReleasing || !got.Released {
		t.Fatalf("lease after the retry = %+v, %v; want releasing", got, err)
	}
}
