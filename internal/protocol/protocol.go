// Package protocol is fleetd's claim protocol: the only code that writes
// leases/, claimed/ and result records, and the only code that deletes from
// pending/. It owns a claim for its whole life — acquire, keep alive, finish,
// release, recover — so that every submitted spec ends in exactly one of
// completed/ or failed/, runs once unless a node died while running it, and
// leaves nothing behind. docs/PROTOCOL.md states the rules; every step below
// names the rule that makes it safe.
//
// The lease is the ownership: leases/<id>.json is created only if absent, and
// every later write of it is a compare-and-swap on the ETag of the holder's
// last write (a fresh nonce makes every write's ETag new). Whoever holds a
// lease that is still valid by its own clock (see Claim) may write the spec's
// other objects; nobody else does.
package protocol

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Store is the S3 queue as the protocol uses it; *store.Store implements it.
type Store interface {
	store.Lister
	store.Getter
	store.Header
	Put(ctx context.Context, key string, body []byte, opt store.PutOptions) (string, error)
	Copy(ctx context.Context, src, dst string, opt store.CopyOptions) error
	Delete(ctx context.Context, key, ifMatch string) error
	DeleteWritten(ctx context.Context, key string, v store.Version) error
	// Versions and DeleteVersions serve the self-test's probe of a
	// versioned bucket.
	Versions(ctx context.Context, key string) ([]store.ObjectVersion, error)
	DeleteVersions(ctx context.Context, key string, ids []string) error
}

var _ Store = (*store.Store)(nil)

// Metrics is told what the protocol does; *metrics.Metrics implements it.
type Metrics interface {
	ClaimConflict()
	LeaseRenewed()
	LeaseTakenOver()
	// SessionEnded is told that this node ended another's stale session.
	SessionEnded()
	// ResultHeld is told that a result waits in memory for the store.
	ResultHeld()
	Finished(outcome string)
	// FleetLeases is told how many leases a recovery scan listed.
	FleetLeases(n int)
}

// Clock is the time source of every wait and every validity judgement, so a
// simulation can drive the protocol on virtual time. (Request deadlines are
// still context deadlines on the real clock.)
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d; Stop cancels it.
	AfterFunc(d time.Duration, f func()) interface{ Stop() bool }
}

// sleep waits d on the protocol's clock, or until ctx ends (its error).
func (p *Protocol) sleep(ctx context.Context, d time.Duration) error {
	done := make(chan struct{})
	t := p.clock.AfterFunc(d, func() { close(done) })
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-done:
		return nil
	}
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) interface{ Stop() bool } {
	return time.AfterFunc(d, f)
}

// MinTTL is the shortest lease ttl: LastModified and Date have 1-second
// resolution, so a lease's age is known only to within a second either way.
const MinTTL = 3 * time.Second

// staleAfter is how old (by the server's clock) a lease with ttl must look
// before it is taken over: its true age is then over ttl for certain.
func staleAfter(ttl time.Duration) time.Duration { return ttl + time.Second }

// Stale reports whether an object of the lease protocol whose last write is
// age old on the server's clock is past its ttl: recovery may take a lease (or
// a claim with no lease) over from then on.
func Stale(age, ttl time.Duration) bool { return age > staleAfter(ttl) }

// validFor is how long after sending a lease write its holder may act on it.
// The write landed after it was sent, so the server will not judge it stale
// before ttl has passed since the send; the margin covers a request that is
// still on its way when the holder stops, and clock rate differences.
func validFor(ttl time.Duration) time.Duration { return ttl - max(time.Second, ttl/5) }

// recoverLimit bounds reads of claimed/ in recovery: the spec was accepted by
// its claimer, perhaps under a larger CELLOS_FLEET_MAX_SPEC_BYTES than ours,
// so recovery does not apply its own limit (S3's largest single PUT).
const recoverLimit = 5 << 30

// MaxLeaseBytes bounds a lease read; ours are about 300 bytes. Everyone who
// reads a lease reads at most this much.
const MaxLeaseBytes = 64 << 10

// Config is what the protocol needs to know.
type Config struct {
	Layout      store.Layout
	Node        string
	TTL         time.Duration // at least MinTTL
	MaxAttempts int
	Logger      *slog.Logger
	Metrics     Metrics
	Clock       Clock // nil: the real clock
}

// Protocol runs the claim protocol on one queue.
type Protocol struct {
	cfg   Config
	store Store
	log   *slog.Logger
	clock Clock
	turn  scanTurn
	reach reachability // patience of an agent without a session
	// session is the agent's session (StartSession); nil for a queue tool,
	// whose leases renew themselves.
	session *Session
	// seen caches what this node read of long-lived leases, so a recovery
	// scan reads each at most once while it does not change.
	seen leaseCache
}

// New returns the protocol for cfg.Layout on store.
func New(cfg Config, storage Store) *Protocol {
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	return &Protocol{cfg: cfg, store: storage, log: cfg.Logger, clock: cfg.Clock}
}

type nopMetrics struct{}

func (nopMetrics) ClaimConflict() {}

func (nopMetrics) LeaseRenewed() {}

func (nopMetrics) LeaseTakenOver() {}

func (nopMetrics) SessionEnded() {}

func (nopMetrics) ResultHeld() {}

func (nopMetrics) Finished(string) {}

func (nopMetrics) FleetLeases(int) {}

// Errors a claim ends with. Callers test them with errors.Is.
var (
	// ErrHeld: another node holds the spec's lease.
	ErrHeld = errors.New("held by another node")
	// ErrGone: pending/ no longer holds the version that was read: another
	// node ran it, or it was replaced.
	ErrGone = errors.New("pending spec changed or gone")
	// ErrLost: the lease was taken over; this node must leave the spec alone.
	ErrLost = errors.New("lease lost")
	// ErrLeftToRecovery: this node stopped acting on a lease it still holds
	// (shutting down, or the store is unreachable); recovery finishes the job.
	ErrLeftToRecovery = errors.New("left to recovery")
)

func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

// definite reports whether err is an answer that repeating the request will
// not change: success, 404, 412 or 413-like, as opposed to an unknown outcome
// or a transient failure.
func definite(err error) bool {
	if err == nil {
		return true
	}
	if errors.Is(err, store.ErrUnknown) {
		return false
	}
	return errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrPrecondition) || errors.Is(err, store.ErrTooLarge)
}
