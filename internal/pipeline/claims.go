package pipeline

import (
	"context"
	"log/slog"
	"time"

	"github.com/cellos/fleetd/internal/protocol"
)

// Protocol is the claim protocol as the pipeline uses it: the only way it
// writes to the queue. claims adapts *protocol.Protocol to it.
type Protocol interface {
	// Claim makes spec this node's to run (see protocol.Protocol.Claim);
	// protocol.ErrHeld or ErrGone: another node has or had it.
	Claim(ctx context.Context, quit <-chan struct{}, spec protocol.Spec) (Claim, error)
	// Reject files a spec that can never run under failed/ with reason.
	Reject(ctx context.Context, quit <-chan struct{}, spec protocol.Spec, reason string) error
	// Promote moves a delayed spec that is due to pending/ (see
	// protocol.Protocol.Promote), returning the pending/ ETag.
	Promote(ctx context.Context, quit <-chan struct{}, key string, now time.Time) (string, error)
}

// Claim is a spec whose lease this node holds, ended by WriteResult and its
// clean-up, or by Release.
type Claim interface {
	ID() string
	Body() []byte
	Log() *slog.Logger // with the spec's attributes
	// Hold says whether the claim is valid now and whether it was taken
	// over, with a channel closed at the next change (see
	// protocol.Claim.Hold): the cell makes progress only while it is valid.
	Hold() (valid, lost bool, changed <-chan struct{})
	// Cancelled is closed once fleetd cancel asked for the spec to stop;
	// CancelledBy names who asked.
	Cancelled() <-chan struct{}
	CancelledBy() string
	// WriteResult writes the result and returns the claim's clean-up, to run
	// after (see protocol.Claim.WriteResult).
	WriteResult(ctx context.Context, rec protocol.Record) (cleanup func(ctx context.Context, quit <-chan struct{}), err error)
	Release(ctx context.Context, quit <-chan struct{}, countRun bool) error
	// Retries is the spec's retry state; Retry returns a failed run's spec
	// to run again not before notBefore (see protocol.Claim.Retry).
	Retries() protocol.RetryState
	Retry(ctx context.Context, quit <-chan struct{}, reason string, notBefore time.Time) error
	// Drop stops keeping the lease alive, leaving the spec to recovery.
	Drop()
}

// claims is the real protocol behind Protocol.
type claims struct{ p *protocol.Protocol }

var _ Protocol = claims{}

func (c claims) Claim(ctx context.Context, quit <-chan struct{}, spec protocol.Spec) (Claim, error) {
	cl, err := c.p.Claim(ctx, quit, spec)
	if err != nil {
		return nil, err
	}
	return heldClaim{cl}, nil
}

func (c claims) Promote(ctx context.Context, quit <-chan struct{}, key string, now time.Time) (string, error) {
	return c.p.Promote(ctx, quit, key, now)
}

func (c claims) Reject(ctx context.Context, quit <-chan struct{}, spec protocol.Spec, reason string) error {
	return c.p.Reject(ctx, quit, spec, reason)
}

// heldClaim gives *protocol.Claim's Body field the method Claim asks for.
type heldClaim struct{ *protocol.Claim }

var _ Claim = heldClaim{}

func (c heldClaim) Body() []byte { return c.Claim.Body }
