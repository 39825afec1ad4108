package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/cellos/fleetd/internal/metrics"
	"github.com/cellos/fleetd/internal/queue"
)

// maxLeaseBytes bounds a lease read; ours are about 250 bytes.
const maxLeaseBytes = 64 << 10

// recoverLoop looks for the work of dead nodes every poll interval until ctx
// ends.
func (p *Pipeline) recoverLoop(ctx context.Context) {
	for {
		jitter := time.Duration(rand.Int64N(int64(p.cfg.PollInterval)/5 + 1))
		t := time.NewTimer(p.cfg.PollInterval + jitter)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := p.recoverOnce(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("recovery scan failed; will retry", "err", err)
		}
	}
}

// recoverOnce takes over the stale leases and the lease-less claims it finds.
// Age is judged on the server's clock: an object's LastModified against the
// Date of the response that listed it.
func (p *Pipeline) recoverOnce(ctx context.Context) error {
	// Claims are listed before leases: a claim whose lease appears in between is
	// live, and a lease is deleted only after its claim.
	type claimed struct {
		key string
		age time.Duration
	}
	var orphans []claimed
	err := p.store.List(ctx, p.cfg.Layout.Dir(queue.Claimed), func(page queue.Page) error {
		for _, o := range page.Objects {
			if age := page.ServerTime.Sub(o.LastModified); age > p.cfg.LeaseTTL {
				orphans = append(orphans, claimed{o.Key, age})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	leased := map[string]bool{}
	var stale []string
	err = p.store.List(ctx, p.cfg.Layout.Dir(queue.Leases), func(page queue.Page) error {
		for _, o := range page.Objects {
			id, ok := p.cfg.Layout.ID(queue.Leases, o.Key)
			if !ok {
				continue
			}
			leased[id] = true
			// The lease's own ttl is checked after reading it; ours filters.
			if page.ServerTime.Sub(o.LastModified) > p.cfg.LeaseTTL {
				stale = append(stale, id)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, id := range stale {
		if ctx.Err() != nil {
			return nil
		}
		p.takeOverLease(id)
	}
	for _, o := range orphans {
		id, ok := p.cfg.Layout.ID(queue.Claimed, o.key)
		if !ok || leased[id] || ctx.Err() != nil {
			continue
		}
		p.takeOverOrphan(id, o.age)
	}
	return nil
}

// takeOverLease replaces a stale lease with our own (compare-and-swap on its
// ETag, so one recoverer wins and the old holder is fenced off), then returns
// the spec.
func (p *Pipeline) takeOverLease(id string) {
	if !p.drain.Begin() {
		return
	}
	defer p.drain.End()
	ctx := context.Background()
	log := p.log.With("spec_id", id)
	key := p.leaseKey(id)
	obj, err := p.store.Get(ctx, key, maxLeaseBytes)
	if err != nil {
		if !errors.Is(err, queue.ErrNotFound) {
			log.Warn("recovery: read lease failed", "err", err)
		}
		return
	}
	var old lease
	if err := json.Unmarshal(obj.Body, &old); err != nil {
		log.Warn("recovery: unreadable lease; taking it over", "err", err)
	}
	ttl := time.Duration(old.TTLMillis) * time.Millisecond
	if ttl <= 0 {
		ttl = p.cfg.LeaseTTL
	}
	age := obj.ServerTime.Sub(obj.LastModified)
	if age <= ttl {
		return // renewed since the listing, or a longer ttl than ours
	}
	mine := lease{Node: p.cfg.Node, Token: newToken(), Epoch: old.Epoch + 1, TTLMillis: p.cfg.LeaseTTL.Milliseconds(), Attempts: old.Attempts, State: leaseRecovering}
	if _, err := p.store.Put(ctx, key, mine.encode(), queue.PutOptions{IfMatch: obj.ETag}); err != nil {
		if errors.Is(err, queue.ErrPrecondition) {
			log.Debug("recovery: lease changed under us; another node has it")
		} else {
			log.Warn("recovery: lease takeover failed", "err", err)
		}
		return
	}
	p.m.LeaseTakenOver()
	log.Warn("recovery: took over a stale lease", "holder", old.Node, "holder_state", old.State,
		"lease_age_ms", age.Milliseconds(), "epoch", mine.Epoch)
	if old.State == leaseFinishing && p.resultWritten(ctx, id, old.Token) {
		// The holder died after writing its result: only the cleanup is left.
		p.deleteOrLog(log, p.cfg.Layout.Key(queue.Claimed, id))
		p.deleteOrLog(log, key)
		return
	}
	p.returnSpec(log, id, old.Attempts)
}

// takeOverOrphan handles a claim with no lease: its node died between claiming
// and leasing. Creating the lease ourselves (create-only) makes it ours.
func (p *Pipeline) takeOverOrphan(id string, age time.Duration) {
	if !p.drain.Begin() {
		return
	}
	defer p.drain.End()
	log := p.log.With("spec_id", id)
	mine := lease{Node: p.cfg.Node, Token: newToken(), Epoch: 1, TTLMillis: p.cfg.LeaseTTL.Milliseconds(), State: leaseRecovering}
	if _, err := p.store.Put(context.Background(), p.leaseKey(id), mine.encode(), queue.PutOptions{IfAbsent: true}); err != nil {
		if !errors.Is(err, queue.ErrPrecondition) {
			log.Warn("recovery: lease for an orphaned claim failed", "err", err)
		}
		return
	}
	p.m.LeaseTakenOver()
	log.Warn("recovery: claim without a lease; releasing it", "claim_age_ms", age.Milliseconds())
	p.returnSpec(log, id, -1)
}

// returnSpec sends a recovered spec back to pending/, or to failed/ once it has
// used up its attempts. attempts < 0 means: read it from the claim.
func (p *Pipeline) returnSpec(log *slog.Logger, id string, attempts int) {
	ctx := context.Background()
	claimedKey := p.cfg.Layout.Key(queue.Claimed, id)
	obj, err := p.store.Get(ctx, claimedKey, p.cfg.MaxSpecBytes)
	if errors.Is(err, queue.ErrNotFound) {
		log.Info("recovery: claim already gone; removing the lease")
		p.deleteOrLog(log, p.leaseKey(id))
		return
	}
	if err != nil {
		// The lease is ours and will go stale again; the next scan retries.
		log.Error("recovery: read claimed spec failed", "err", err)
		return
	}
	if attempts < 0 {
		attempts, _ = strconv.Atoi(obj.Metadata[metaAttempts])
	}
	if attempts < p.cfg.MaxAttempts {
		p.requeue(log, id, obj.Body, attempts)
		return
	}
	rec := record{node: p.cfg.Node, attempts: attempts, outcome: "abandoned",
		reason: fmt.Sprintf("abandoned after %d attempts", attempts), finished: time.Now()}
	if _, err := p.store.Put(ctx, p.cfg.Layout.Key(queue.Failed, id), obj.Body, queue.PutOptions{Metadata: rec.metadata()}); err != nil {
		log.Error("recovery: write to failed/ failed", "err", err)
		return
	}
	p.deleteOrLog(log, claimedKey)
	p.deleteOrLog(log, p.leaseKey(id))
	p.m.Finished(metrics.Abandoned)
	log.Warn("spec finalised", "state", string(queue.Failed), "reason", rec.reason)
}

// resultWritten reports whether completed/ or failed/ holds the result of the
// claim with this token.
func (p *Pipeline) resultWritten(ctx context.Context, id, token string) bool {
	for _, s := range []queue.State{queue.Completed, queue.Failed} {
		if o, err := p.store.Head(ctx, p.cfg.Layout.Key(s, id)); err == nil && o.Metadata[metaToken] == token {
			return true
		}
	}
	return false
}
