// The file intent (reject, cancel of a pending spec): docs/PROTOCOL.md,
// "Intents" and "Reject".

package protocol

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Reject files a spec that can never run under failed/ with the reason,
// without running it. It acts on the version read (spec.ETag) only, under the
// spec's lease like every other move: a resubmission landing meanwhile is
// neither deleted nor filed with the old version's reason. spec.Body may be
// nil for a spec too large to read; it is then copied server-side.
func (p *Protocol) Reject(ctx context.Context, quit <-chan struct{}, spec Spec, reason string) error {
	err := p.file(ctx, quit, spec, Rejected, reason)
	if err == nil {
		p.log.Warn("spec rejected", "event", "spec.rejected", "spec_id", spec.ID, "reason", reason)
	}
	return err
}

// file moves the pending version spec.ETag to failed/ without running it,
// under the spec's lease, with outcome and reason.
func (p *Protocol) file(ctx context.Context, quit <-chan struct{}, spec Spec, outcome Outcome, reason string) error {
	c, err := p.acquire(ctx, spec.ID, leaseBody{State: stateRejecting, Intent: intentFile}.withPending(spec.version()))
	if err != nil {
		return err
	}
	return p.fileUnder(ctx, quit, c, spec, outcome, reason)
}

// fileUnder is file under a lease c already holds with the file intent for
// spec.ETag.
func (p *Protocol) fileUnder(ctx context.Context, quit <-chan struct{}, c *Claim, spec Spec, outcome Outcome, reason string) error {
	c.Body = spec.Body
	rec := Record{Outcome: outcome, Reason: reason, Finished: time.Now(), node: p.cfg.Node, token: c.origin}
	failedKey := p.cfg.Layout.Key(store.Failed, spec.ID)
	if outcome == Cancelled {
		// A cancelled spec's record has no output: one left from an earlier
		// run (before a requeue) goes first, so it is not read as this one's.
		if err := c.deleteOutput(ctx, quit); err != nil {
			return c.stop(err)
		}
	}
	err := c.act(ctx, quit, "write "+string(outcome), func(ctx context.Context) error {
		// The version we judged, not whatever pending/ holds now: the copy's
		// source condition compares bytes only, and a requeue or an identical
		// resubmission since has the same.
		head, err := p.store.Head(ctx, spec.Key)
		if err == nil && !spec.version().is(head) {
			// Definite: act must not repeat it (ErrPrecondition).
			return fmt.Errorf("%s: %w: %w", spec.Key, ErrGone, store.ErrPrecondition)
		}
		if err != nil {
			return err
		}
		if spec.Body != nil {
			_, err = p.store.Put(ctx, failedKey, spec.Body, store.PutOptions{Metadata: rec.metadata()})
			return err
		}
		return p.store.Copy(ctx, spec.Key, failedKey, store.CopyOptions{SourceIfMatch: spec.ETag, Metadata: rec.metadata()})
	})
	if err != nil {
		if errors.Is(err, ErrGone) || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrPrecondition) {
			c.end(ctx, quit) // changed since we judged it: judge again next poll
			return fmt.Errorf("%s %s: %w", outcome, spec.ID, ErrGone)
		}
		return c.stop(err)
	}
	if err := p.consumeFiled(ctx, quit, c, spec.version()); err != nil {
		return c.stop(err)
	}
	c.end(ctx, quit)
	p.cfg.Metrics.Finished(string(outcome))
	return nil
}

// consumeFiled deletes the pending/ version a filing judged, once failed/
// holds it. 412: replaced since; the new version stays pending and is
// judged on its own.
func (p *Protocol) consumeFiled(ctx context.Context, quit <-chan struct{}, c *Claim, judged version) error {
	err := c.deletePending(ctx, quit, judged)
	if errors.Is(err, store.ErrPrecondition) || errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// finishFile completes a filing (reject, cancel) whose holder stopped. If
// failed/ holds the record the intent wrote (its origin's token), the filing
// was decided and written: the pending/ version it judged goes, as the holder
// would have done — a cancel the tool was interrupted in is then in effect,
// and a node with a larger size limit does not run a spec another rejected.
// A pending/ of other bytes or written since is a resubmission and stays. If
// nothing was filed, a filing that honours a cancel mark is done now; any
// other is undone: only the lease goes, and pending/ is judged again.
func (p *Protocol) finishFile(ctx context.Context, quit <-chan struct{}, c *Claim, judged version) {
	var res store.Object
	err := c.act(ctx, quit, "check failed", func(ctx context.Context) (err error) {
		res, err = p.store.Head(ctx, p.cfg.Layout.Key(store.Failed, c.id))
		return err
	})
	switch {
	case err == nil && res.Metadata[metaToken] == c.origin:
		err := p.consumeJudged(ctx, quit, c, judged)
		if err != nil {
			p.leave(c, err)
			return
		}
		c.log.Info("recovery: finished an interrupted filing", "event", "recovery.file_finished", "outcome", res.Metadata[metaOutcome])
	case (err == nil || errors.Is(err, store.ErrNotFound)) && c.CancelledBy() != "":
		key := p.cfg.Layout.Key(store.Pending, c.id)
		spec := Spec{ID: c.id, Key: key, ETag: judged.etag, Modified: judged.modified, VersionID: judged.id}
		if err := p.fileUnder(ctx, quit, c, spec, Cancelled, "cancelled by "+c.CancelledBy()); err != nil && !errors.Is(err, ErrGone) {
			p.leave(c, err)
		}
		return
	case err == nil, errors.Is(err, store.ErrNotFound):
		c.log.Info("recovery: an interrupted filing wrote nothing; pending/ stays", "event", "recovery.file_undone")
	default:
		p.leave(c, err)
		return
	}
	c.end(ctx, quit)
}

// consumeJudged is consumeFiled for a successor, which cannot know whether
// the holder's delete landed: it deletes pending/ only while it still holds
// the version judged, not an identical resubmission written since.
func (p *Protocol) consumeJudged(ctx context.Context, quit <-chan struct{}, c *Claim, judged version) error {
	var head store.Object
	err := c.act(ctx, quit, "read pending", func(ctx context.Context) (err error) {
		head, err = p.store.Head(ctx, p.cfg.Layout.Key(store.Pending, c.id))
		return err
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return err
	case !judged.is(head):
		c.log.Info("recovery: pending/ holds a version written since the filing; it stays", "event", "recovery.resubmission_kept")
		return nil
	}
	return p.consumeFiled(ctx, quit, c, judged)
}
