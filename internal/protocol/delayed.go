// The promote intent: docs/PROTOCOL.md, "Delayed specs".

package protocol

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Metadata a promotion writes on pending/: who promoted it (the intent's
// origin) and the delayed version it copied, so that a successor knows the
// copy is its intent's own and deletes exactly that version.
const (
	metaDelayedModified = "fleetd-delayed-modified"
	metaDelayedVersion  = "fleetd-delayed-version"
)

// ErrNotDue: a delayed spec's time has not come.
var ErrNotDue = errors.New("not due yet")

// Promote moves a delayed spec whose time has come (key, due by the store's
// clock at now) to pending/<id>.json, under the spec's lease: GET the delayed
// key, PUT pending/ create-only with its bytes and metadata, DELETE the
// delayed version read, delete the lease. It returns the pending/ object's
// ETag. ErrHeld: the id is in flight (a claim, a retry, another promotion);
// ErrPending: pending/ holds the id already, and the delayed spec waits for
// it to go; ErrNotFound: promoted or deleted since the listing.
func (p *Protocol) Promote(ctx context.Context, quit <-chan struct{}, key string, now time.Time) (string, error) {
	id, due, err := p.cfg.Layout.ParseDelayed(key)
	if err != nil {
		return "", fmt.Errorf("promote %s: %w", key, err)
	}
	if now.Before(due) {
		return "", fmt.Errorf("promote %s: %w", key, ErrNotDue)
	}
	c, err := p.acquire(ctx, id, leaseBody{State: statePromoting, Intent: intentPromote, DelayedKey: key})
	if err != nil {
		return "", fmt.Errorf("promote %s: %w", key, err)
	}
	// Read under the lease: the version read is the one deleted below.
	var o store.Object
	err = c.act(ctx, quit, "read delayed", func(ctx context.Context) (err error) {
		o, err = p.store.Get(ctx, key, recoverLimit)
		return err
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		c.end(ctx, quit)
		return "", fmt.Errorf("promote %s: %w", key, err)
	case err != nil:
		return "", fmt.Errorf("promote %s: %w", key, c.stop(err))
	}
	meta := map[string]string{}
	for k, v := range o.Metadata {
		meta[k] = v
	}
	delete(meta, metaNotBefore)
	meta[metaToken] = c.origin
	meta[metaDelayedModified] = o.LastModified.UTC().Format(time.RFC3339Nano)
	if o.VersionID != "" {
		meta[metaDelayedVersion] = o.VersionID
	}
	// Create-only: a resubmission pending under the id stands, and the
	// delayed spec waits for it to go. A 412 may be our own create whose
	// answer was lost (in this call or an earlier repeat of it): pending/
	// then carries our origin, and under our lease nobody consumes it.
	var etag string
	pendingKey := p.cfg.Layout.Key(store.Pending, id)
	err = c.act(ctx, quit, "write pending", func(ctx context.Context) (err error) {
		etag, err = p.store.Put(ctx, pendingKey, o.Body, store.PutOptions{IfAbsent: true, Metadata: meta})
		if errors.Is(err, store.ErrPrecondition) {
			h, herr := p.store.Head(ctx, pendingKey)
			switch {
			case herr != nil && !errors.Is(herr, store.ErrNotFound):
				return herr // unknown: repeat
			case herr == nil && h.Metadata[metaToken] == c.origin:
				etag, err = h.ETag, nil
			default:
				err = fmt.Errorf("%s: %w", pendingKey, store.ErrPrecondition)
			}
		}
		return err
	})
	switch {
	case errors.Is(err, store.ErrPrecondition):
		c.end(ctx, quit)
		return "", fmt.Errorf("promote %s: %w", key, ErrPending)
	case err != nil:
		return "", fmt.Errorf("promote %s: %w", key, c.stop(err))
	}
	p.deleteDelayed(ctx, quit, c, key, store.Version{ETag: o.ETag, Modified: o.LastModified, ID: o.VersionID})
	c.end(ctx, quit)
	c.log.Info("delayed spec due: now pending", "event", "spec.promoted", "key", key)
	return etag, nil
}

// deleteDelayed deletes the delayed version v under c. Gone or replaced is
// done as far as this intent goes: a version written since is another
// submission, promoted on its own.
func (p *Protocol) deleteDelayed(ctx context.Context, quit <-chan struct{}, c *Claim, key string, v store.Version) {
	err := c.act(ctx, quit, "delete delayed", func(ctx context.Context) error {
		return p.store.DeleteWritten(ctx, key, v)
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrPrecondition) {
		c.log.Warn("delayed spec not deleted after its promotion", "event", "promote.delete_failed", "key", key, "err", err)
	}
}

// finishPromote ends a promotion whose holder stopped: if pending/ holds the
// intent's own copy (its origin in the metadata), the delayed version it
// copied goes; otherwise nothing was promoted, and the lease goes alone (the
// delayed spec is promoted again at a later poll).
func (p *Protocol) finishPromote(ctx context.Context, quit <-chan struct{}, c *Claim, key string) {
	var h store.Object
	err := c.act(ctx, quit, "check pending", func(ctx context.Context) (err error) {
		h, err = p.store.Head(ctx, p.cfg.Layout.Key(store.Pending, c.id))
		return err
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		p.leave(c, err)
		return
	}
	if err == nil && h.Metadata[metaToken] == c.origin && key != "" {
		// The copy is ours: the delayed version it copied goes, if it is
		// still there — read first, so that only that version is deleted.
		modified, _ := time.Parse(time.RFC3339Nano, h.Metadata[metaDelayedModified])
		copied := store.Version{ETag: h.ETag, Modified: modified, ID: h.Metadata[metaDelayedVersion]}
		var d store.Object
		err = c.act(ctx, quit, "read delayed", func(ctx context.Context) (err error) {
			d, err = p.store.Head(ctx, key)
			return err
		})
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			p.leave(c, err)
			return
		case d.ETag == copied.ETag && d.LastModified.Truncate(time.Second).Equal(modified.Truncate(time.Second)) &&
			(copied.ID == "" || d.VersionID == "" || d.VersionID == copied.ID):
			p.deleteDelayed(ctx, quit, c, key, copied)
		}
	}
	c.end(ctx, quit)
}
