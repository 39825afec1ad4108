// The schedule intent: docs/PROTOCOL.md, "Periodic specs".

package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Due is one due time of a schedule, to submit as the spec ID.
type Due struct {
	ID        string    // <name>-<due>: the same on every agent
	Schedule  string    // the schedule's name
	At        time.Time // the due time
	MarkerKey string    // {prefix}/schedules/<name>.last
	DefKey    string    // {prefix}/schedules/<name>.json: the spec bytes
	Body      []byte    // the spec bytes, as read from DefKey
}

// metaSchedule names, on a spec a schedule submitted, the schedule's
// definition.
const metaSchedule = "fleetd-schedule"

// marker is the body of a schedule's marker: the last due time submitted.
type marker struct {
	Due   time.Time `json:"due"`
	Node  string    `json:"node"`
	Nonce string    `json:"nonce"`
}

// ParseMarker reads a schedule marker's due time.
func ParseMarker(b []byte) (time.Time, error) {
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		return time.Time{}, fmt.Errorf("schedule marker: %w", err)
	}
	return m.Due, nil
}

// SubmitDue submits the spec of one due time exactly once for the fleet,
// under the lease of its id: read the marker; if it says this due time (or
// a later one) was submitted, nothing; else PUT pending/<id> create-only,
// then move the marker to the due time by compare-and-swap, then delete the
// lease. The lease makes the PUT safe to repeat (nobody consumes pending/
// while it is held), and the marker, moved before the lease goes, makes any
// later holder of the id see that the due time was submitted: a create-only
// PUT alone would submit it again once the first copy was consumed.
// submitted is false when the marker was already there. ErrHeld: another
// agent is at it.
func (p *Protocol) SubmitDue(ctx context.Context, quit <-chan struct{}, d Due) (submitted bool, err error) {
	c, err := p.acquire(ctx, d.ID, leaseBody{State: stateScheduling, Intent: intentSchedule,
		ScheduleDue: d.At.UTC().Format(time.RFC3339), MarkerKey: d.MarkerKey, DefKey: d.DefKey})
	if err != nil {
		return false, fmt.Errorf("schedule %s: %w", d.ID, err)
	}
	submitted, err = p.finishDue(ctx, quit, c, d.At, d.MarkerKey, d.DefKey, d.Body)
	if err != nil {
		return false, fmt.Errorf("schedule %s: %w", d.ID, err)
	}
	return submitted, nil
}

// finishDue is the schedule intent under c, for its holder and for a
// successor (body nil: read from defKey if it must be written).
func (p *Protocol) finishDue(ctx context.Context, quit <-chan struct{}, c *Claim, due time.Time, markerKey, defKey string, body []byte) (bool, error) {
	last, etag, err := p.readMarker(ctx, quit, c, markerKey)
	if err != nil {
		p.leave(c, err)
		return false, err
	}
	if !last.Before(due) {
		c.end(ctx, quit) // submitted already, by us or another agent
		return false, nil
	}
	pendingKey := p.cfg.Layout.Key(store.Pending, c.id)
	if body == nil {
		// A successor: the holder may have written pending/ already.
		err := c.act(ctx, quit, "check pending", func(ctx context.Context) error {
			_, err := p.store.Head(ctx, pendingKey)
			return err
		})
		switch {
		case err == nil:
		case errors.Is(err, store.ErrNotFound):
			err = c.act(ctx, quit, "read schedule", func(ctx context.Context) error {
				o, err := p.store.Get(ctx, defKey, recoverLimit)
				body = o.Body
				return err
			})
			if errors.Is(err, store.ErrNotFound) {
				c.end(ctx, quit) // the schedule was removed before its spec was written
				return false, nil
			}
			if err != nil {
				p.leave(c, err)
				return false, err
			}
		default:
			p.leave(c, err)
			return false, err
		}
	}
	if body != nil {
		err := c.act(ctx, quit, "write pending", func(ctx context.Context) error {
			_, err := p.store.Put(ctx, pendingKey, body, store.PutOptions{IfAbsent: true,
				Metadata: map[string]string{metaToken: c.origin, metaSchedule: defKey}})
			if errors.Is(err, store.ErrPrecondition) {
				// Our earlier attempt, or a predecessor's in the chain:
				// under the lease nobody else writes or consumes it.
				return nil
			}
			return err
		})
		if err != nil {
			p.leave(c, err)
			return false, err
		}
	}
	// Move the marker forward, never back: a later due time submitted
	// meanwhile by another agent stands.
	for {
		m, _ := json.Marshal(marker{Due: due.UTC(), Node: p.cfg.Node, Nonce: newToken()})
		err := c.act(ctx, quit, "move marker", func(ctx context.Context) error {
			_, err := p.store.Put(ctx, markerKey, m, store.PutOptions{IfMatch: etag, IfAbsent: etag == ""})
			if errors.Is(err, store.ErrUnknown) {
				// Read back: is our write there?
				o, gerr := p.store.Get(ctx, markerKey, MaxLeaseBytes)
				if gerr == nil && string(o.Body) == string(m) {
					return nil
				}
			}
			return err
		})
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrPrecondition) && !errors.Is(err, store.ErrNotFound) {
			p.leave(c, err)
			return false, err
		}
		if last, etag, err = p.readMarker(ctx, quit, c, markerKey); err != nil {
			p.leave(c, err)
			return false, err
		}
		if !last.Before(due) {
			break
		}
	}
	c.end(ctx, quit)
	c.log.Info("schedule due time submitted", "event", "schedule.submitted", "schedule", defKey, "due", due.UTC().Format(time.RFC3339))
	return true, nil
}

// readMarker reads a schedule's marker under c: the last due time submitted
// (zero if none) and its ETag ("" if none).
func (p *Protocol) readMarker(ctx context.Context, quit <-chan struct{}, c *Claim, key string) (time.Time, string, error) {
	var o store.Object
	err := c.act(ctx, quit, "read marker", func(ctx context.Context) (err error) {
		o, err = p.store.Get(ctx, key, MaxLeaseBytes)
		return err
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return time.Time{}, "", nil
	case err != nil:
		return time.Time{}, "", err
	}
	last, err := ParseMarker(o.Body)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("%s: %w", key, err)
	}
	return last, o.ETag, nil
}

// finishSchedule ends a schedule intent whose holder stopped, as it would
// have: the marker read again, the spec written if it is not, the marker
// moved, the lease deleted.
func (p *Protocol) finishSchedule(ctx context.Context, quit <-chan struct{}, c *Claim, l leaseBody) {
	due, err := time.Parse(time.RFC3339, l.ScheduleDue)
	if err != nil || l.MarkerKey == "" {
		c.log.Warn("recovery: a schedule lease without its due time; removing it", "event", "recovery.schedule_unreadable")
		c.end(ctx, quit)
		return
	}
	if _, err := p.finishDue(ctx, quit, c, due, l.MarkerKey, l.DefKey, nil); err == nil {
		c.log.Info("recovery: finished a schedule's submission", "event", "recovery.schedule_finished", "due", l.ScheduleDue)
	}
}
