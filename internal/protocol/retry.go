// Retries of failed cells: docs/PROTOCOL.md, "Retry".

package protocol

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Metadata of a spec's retries, carried on pending/, delayed and claimed/
// objects from run to run, and into the result record.
const (
	metaRetries   = "fleetd-retries"    // the spec's own limit (fleetd submit --retries)
	metaRetried   = "fleetd-retried"    // failed runs retried so far
	metaReasons   = "fleetd-reasons"    // each failed run's reason, oldest first
	metaNotBefore = "fleetd-not-before" // when the retry may run (also in its key)
)

// reasonSep separates the reasons in fleetd-reasons; a reason's own "|" is
// written "/".
const reasonSep = " | "

// maxReasons keeps fleetd-reasons, with the record's other fields, inside
// S3's 2 KB of metadata: the oldest reasons go first.
const maxReasons = 1024

// RetryState is what a spec's metadata says about its retries.
type RetryState struct {
	// Limit is the spec's own retry limit; -1 when it sets none and the
	// agent's CELLOS_FLEET_RETRIES applies.
	Limit int
	// Done is the number of failed runs retried so far.
	Done int
	// Reasons are the failed runs' reasons, oldest first.
	Reasons []string
}

// ParseRetry reads the retry state from a spec's metadata. A limit or count
// that does not parse, or is negative, is taken as absent.
func ParseRetry(meta map[string]string) RetryState {
	r := RetryState{Limit: -1}
	if n, err := strconv.Atoi(meta[metaRetries]); err == nil && n >= 0 {
		r.Limit = n
	}
	if n, err := strconv.Atoi(meta[metaRetried]); err == nil && n >= 0 {
		r.Done = n
	}
	if s := meta[metaReasons]; s != "" {
		r.Reasons = strings.Split(s, reasonSep)
	}
	return r
}

// RetryLimitMetadata is the metadata that gives a spec its own retry limit
// (fleetd submit --retries).
func RetryLimitMetadata(limit int) map[string]string {
	return map[string]string{metaRetries: strconv.Itoa(limit)}
}

// Left returns how many retries remain, with def the agent's limit for a
// spec that sets none.
func (r RetryState) Left(def int) int {
	limit := r.Limit
	if limit < 0 {
		limit = def
	}
	return max(0, limit-r.Done)
}

// after returns the state once a failed run with reason is retried.
func (r RetryState) after(reason string) RetryState {
	n := r
	n.Done++
	n.Reasons = append(append([]string(nil), r.Reasons...), reason)
	return n
}

// metadata writes the state; nothing for a spec that never had any.
func (r RetryState) metadata() map[string]string {
	m := map[string]string{}
	if r.Limit >= 0 {
		m[metaRetries] = strconv.Itoa(r.Limit)
	}
	if r.Done > 0 {
		m[metaRetried] = strconv.Itoa(r.Done)
	}
	if s := joinReasons(r.Reasons); s != "" {
		m[metaReasons] = s
	}
	return m
}

// joinReasons writes reasons for fleetd-reasons, dropping the oldest while
// they do not fit.
func joinReasons(reasons []string) string {
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = strings.ReplaceAll(asciiHeader(r), "|", "/")
	}
	for len(parts) > 1 && len(strings.Join(parts, reasonSep)) > maxReasons {
		parts = parts[1:]
	}
	s := strings.Join(parts, reasonSep)
	if len(s) > maxReasons {
		s = s[:maxReasons]
	}
	return s
}

// Retries returns the spec's retry state as the claim read it.
func (c *Claim) Retries() RetryState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retry
}

// Retry returns a spec whose run failed (reason) to the queue, not to run
// before notBefore: it is written under the spec's delayed key with the
// retry counted and the reason added, then claimed/ and the lease go. The
// run does not count against CELLOS_FLEET_MAX_ATTEMPTS: it ended on its own.
// A spec someone cancelled is filed cancelled instead.
func (c *Claim) Retry(ctx context.Context, quit <-chan struct{}, reason string, notBefore time.Time) error {
	next := c.Retries().after(reason)
	meta := next.metadata()
	meta[metaAttempts] = strconv.Itoa(c.Attempt - 1)
	meta[metaNotBefore] = notBefore.UTC().Format(time.RFC3339Nano)
	key := c.p.cfg.Layout.DelayedKey(c.id, notBefore)
	// As a release: the lease says what it writes before it writes it, so
	// a successor ends where this holder would have (finishRetry), and the
	// compare-and-swap reads a cancel mark that landed first. The state is
	// releasing: fleetd cancel leaves such a lease alone.
	c.mu.Lock()
	c.lease.State, c.lease.Released = stateReleasing, true
	c.lease.RetryKey, c.lease.RetryMeta = key, meta
	c.mu.Unlock()
	if err := c.act(ctx, quit, "mark retrying", c.renew); err != nil {
		return c.stop(err)
	}
	if by := c.CancelledBy(); by != "" {
		cleanup, err := c.WriteResult(ctx, Record{Outcome: Cancelled, Reason: "cancelled by " + by, Finished: time.Now()})
		if err != nil {
			return err
		}
		cleanup(ctx, quit)
		return nil
	}
	if err := c.p.writeRetry(ctx, quit, c, c.Body, key, meta); err != nil {
		return c.stop(err)
	}
	c.clearClaimed(ctx, quit)
	c.end(ctx, quit)
	c.p.cfg.Metrics.Finished(string(Retried))
	c.log.Info("spec failed; retried later", "event", "spec.retry", "reason", reason, "retry", next.Done,
		"not_before", notBefore.UTC().Format(time.RFC3339Nano), "key", key)
	return nil
}

// writeRetry writes the retry's delayed key create-only under c. The key
// names the id and the due time to the millisecond, so only this retry's
// holders write it: a 412 is an earlier attempt of ours, or a predecessor's.
func (p *Protocol) writeRetry(ctx context.Context, quit <-chan struct{}, c *Claim, body []byte, key string, meta map[string]string) error {
	err := c.act(ctx, quit, "write retry", func(ctx context.Context) error {
		_, err := p.store.Put(ctx, key, body, store.PutOptions{IfAbsent: true, Metadata: meta})
		if errors.Is(err, store.ErrPrecondition) {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("write retry %s: %w", key, err)
	}
	return nil
}

// retrying reports whether the lease's holder was retrying the spec, and
// where to.
func (c *Claim) retrying() (key string, meta map[string]string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease.RetryKey, c.lease.RetryMeta, c.lease.RetryKey != ""
}

// finishRetry ends, as its holder would have, a retry whose holder stopped:
// claimed/ (c.Body) is still there, so the delayed key may not be: write it
// (create-only: one that landed stands), then clear the claim.
func (p *Protocol) finishRetry(ctx context.Context, quit <-chan struct{}, c *Claim, key string, meta map[string]string) {
	if err := p.writeRetry(ctx, quit, c, c.Body, key, meta); err != nil {
		p.leave(c, err)
		return
	}
	c.log.Info("recovery: finished a retry its holder began", "event", "recovery.retry_finished", "key", key)
	c.clearClaimed(ctx, quit)
	c.end(ctx, quit)
}
