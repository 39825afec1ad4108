// The lease body and its codec: docs/PROTOCOL.md, "The rules" and "Intents".

package protocol

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Lease states, written for operators to read; recovery decides from the
// intent and the objects themselves, not from the state.
const (
	stateClaiming   = "claiming"   // acquired; pending/ not yet consumed
	stateRunning    = "running"    // pending/ consumed; the cell may run
	stateFinishing  = "finishing"  // writing the result
	stateReleasing  = "releasing"  // returning the spec to pending/
	stateRecovering = "recovering" // taken over from a stale holder
	stateRejecting  = "rejecting"  // filing a bad spec under failed/
	stateRequeueing = "requeueing" // fleetd requeue moving failed/ to pending/
	statePruning    = "pruning"    // fleetd prune deleting a result
	stateSubmitting = "submitting" // fleetd submit writing pending/
	stateAlive      = "alive"      // a session object
	statePromoting  = "promoting"  // moving a delayed spec that is due to pending/
	stateScheduling = "scheduling" // submitting a schedule's due time (schedule.go)
	stateCancelling = "cancelling" // fleetd cancel filing every copy of the spec
)

// Intents: what the holder of a lease is doing to the spec's objects. A
// recoverer carries the intent and its facts forward unchanged and finishes
// it as its first holder would have (or undoes it where that is the rule), so
// a chain of stopped holders ends where the first would have.
const (
	intentRun      = "run"      // claim, run, finish or release (Claim)
	intentFile     = "file"     // move pending_etag to failed/ unrun (reject, cancel)
	intentRequeue  = "requeue"  // move failed_etag back to pending/
	intentPrune    = "prune"    // delete the result judged (result_etag)
	intentSubmit   = "submit"   // write pending/ (fleetd submit)
	intentPromote  = "promote"  // move delayed_key to pending/ (delayed.go)
	intentSchedule = "schedule" // submit a schedule's due time once (schedule.go)
	intentCancel   = "cancel"   // file every copy not running cancelled (cancel.go)
	intentSession  = "session"  // a session's own object (see Session)
)

// leaseBody is the body of leases/<id>.json.
type leaseBody struct {
	Node      string `json:"node"`
	Token     string `json:"token"`
	Nonce     string `json:"nonce"`
	Epoch     int    `json:"epoch"`
	TTLMillis int64  `json:"ttl_ms"`
	// Attempts is the number of this claim's run, counting every run that
	// may have started before it; it counts only once pending/ is consumed.
	Attempts int    `json:"attempts"`
	State    string `json:"state"`
	// Intent is what the lease is held for (intentRun if empty, or the
	// state of a lease written before intents: see intent).
	Intent string `json:"intent,omitempty"`
	// Origin is the token of the intent's first holder. Every record written
	// under the intent carries it, whichever holder of the chain writes it,
	// so a successor knows the intent's own writes from older ones.
	Origin string `json:"origin,omitempty"`
	// PendingETag is the pending/ version this claim consumes: while pending/
	// still holds it, no run of this claim can have started.
	PendingETag string `json:"pending_etag,omitempty"`
	// PendingModified is when that version was written (as the store said):
	// an identical resubmission has the same ETag, not the same time.
	PendingModified string `json:"pending_modified,omitempty"`
	// PendingVersion is that version's id, on a versioned bucket: the one
	// name no other version shares, even one written the same second.
	PendingVersion string `json:"pending_version,omitempty"`
	// Released: the holder was returning the spec to pending/ (a release),
	// so a pending/ of the claim's bytes may be its own write, not a
	// resubmission: it stands for the run.
	Released bool `json:"released,omitempty"`
	// FailedETag is the failed/ version a requeue moves back to pending/.
	FailedETag string `json:"failed_etag,omitempty"`
	// ResultKey and ResultETag name the result a prune judged old.
	ResultKey  string `json:"result_key,omitempty"`
	ResultETag string `json:"result_etag,omitempty"`
	// RetryKey and RetryMeta: the holder was returning the failed spec to
	// run again, to this delayed key with this metadata (Claim.Retry).
	RetryKey  string            `json:"retry_key,omitempty"`
	RetryMeta map[string]string `json:"retry_meta,omitempty"`
	// DelayedKey is the delayed spec a promotion moves to pending/.
	DelayedKey string `json:"delayed_key,omitempty"`
	// ScheduleDue, MarkerKey and DefKey: the schedule's due time a holder
	// submits, its marker and its definition (SubmitDue).
	ScheduleDue string `json:"schedule_due,omitempty"`
	MarkerKey   string `json:"marker_key,omitempty"`
	DefKey      string `json:"def_key,omitempty"`
	// Cancel, when set, names who asked for the spec to be cancelled; the
	// holder stops its cell and files it cancelled (see Protocol.Cancel).
	Cancel string `json:"cancel,omitempty"`
	// Session is the token of the holder's session (sessions/<token>.json):
	// the lease is alive while that session is, and is not renewed itself.
	// Empty: the lease renews itself and is judged by its own age.
	Session string `json:"session,omitempty"`
	// SessionTTLMillis is the holder's ttl when the lease names a session;
	// TTLMillis then says "never stale" to agents of the version before
	// sessions, which judge a lease by its own age and would otherwise take
	// over every lease ttl + 1 s after its claim (a rolling upgrade).
	SessionTTLMillis int64 `json:"session_ttl_ms,omitempty"`
	// Ring, in a session's own object, lists specs whose leases fleetd
	// cancel marked: the session's holder reads those leases at once.
	Ring []string `json:"ring,omitempty"`
	// PrevToken is the token of the holder a recoverer took over from.
	PrevToken string `json:"prev_token,omitempty"`
	Written   string `json:"written"` // holder's clock; informational only
}

func (l leaseBody) ttl() time.Duration {
	if l.Session != "" && l.SessionTTLMillis > 0 {
		return time.Duration(l.SessionTTLMillis) * time.Millisecond
	}
	return time.Duration(l.TTLMillis) * time.Millisecond
}

// neverStaleMillis is a lease ttl no agent of the version before sessions
// ever reaches: 100 years, well inside time.Duration's range.
const neverStaleMillis = 100 * 365 * 24 * 3600 * 1000

// nameSession makes l a lease that lives while session tok (of ttl) does.
func (l *leaseBody) nameSession(tok string, ttl time.Duration) {
	l.Session, l.SessionTTLMillis, l.TTLMillis = tok, ttl.Milliseconds(), neverStaleMillis
}

// version names one version of an object: its ETag, when it was written
// and, on a versioned bucket, its version id. An ETag is the MD5 of the
// bytes, so an identical resubmission, rerun or result shares it; the time
// tells them apart to the store's resolution (a second on S3), the id
// always. A zero time compares ETags only (a lease or claim written before
// versions were recorded).
type version struct {
	etag     string
	modified time.Time
	id       string
}

// is reports whether o is the version v.
func (v version) is(o store.Object) bool {
	return o.ETag == v.etag && (v.modified.IsZero() || o.LastModified.Equal(v.modified)) &&
		(v.id == "" || o.VersionID == "" || o.VersionID == v.id)
}

// named is v as the store names it for a conditional delete.
func (v version) named() store.Version {
	return store.Version{ETag: v.etag, Modified: v.modified, ID: v.id}
}

// pending returns the pending/ version the lease's intent judged.
func (l leaseBody) pending() version {
	t, _ := time.Parse(time.RFC3339Nano, l.PendingModified)
	return version{etag: l.PendingETag, modified: t, id: l.PendingVersion}
}

// withPending returns l judging the pending/ version v.
func (l leaseBody) withPending(v version) leaseBody {
	l.PendingETag, l.PendingModified, l.PendingVersion = v.etag, "", v.id
	if !v.modified.IsZero() {
		l.PendingModified = v.modified.UTC().Format(time.RFC3339Nano)
	}
	return l
}

// intent returns the lease's intent; a lease written before intents had them
// says what it does in its state.
func (l leaseBody) intent() string {
	switch {
	case l.Intent != "":
		return l.Intent
	case l.State == stateRejecting:
		return intentFile
	case l.State == stateRequeueing:
		return intentRequeue
	}
	return intentRun
}

// origin returns the token records of the intent carry; a lease written
// before intents had it is its own origin.
func (l leaseBody) origin() string {
	if l.Origin != "" {
		return l.Origin
	}
	return l.Token
}

// successor is the lease a recoverer writes over l: its own token, the
// next epoch, and l's intent with every fact of it unchanged.
func (l leaseBody) successor(node, token string, ttl time.Duration) leaseBody {
	n := l
	n.Node, n.Token, n.Epoch, n.TTLMillis = node, token, l.Epoch+1, ttl.Milliseconds()
	n.State, n.Intent, n.Origin, n.PrevToken = stateRecovering, l.intent(), l.origin(), l.Token
	n.Session, n.SessionTTLMillis, n.Ring = "", 0, nil
	return n
}

// LeaseInfo is what a lease says, for the queue tools.
type LeaseInfo struct {
	Node     string
	Attempts int
	State    string
	Epoch    int
	// TTL is the holder's ttl: the lease is stale once its last write is
	// older than TTL + 1 s on the server's clock — or, if it names a
	// session, once that session's last write is.
	TTL time.Duration
	// Session is the holder's session token ("": the lease renews itself).
	Session string
}

// Shown is the state to show an operator. A lease that names a session is
// not rewritten when its cell starts, so "claiming" with claimed/ written
// (claimed) means the cell runs.
func (l LeaseInfo) Shown(claimed bool) string {
	if l.Session != "" && l.State == stateClaiming && claimed {
		return stateRunning
	}
	return l.State
}

// ParseLease decodes a lease body.
func ParseLease(b []byte) (LeaseInfo, error) {
	var l leaseBody
	if err := json.Unmarshal(b, &l); err != nil {
		return LeaseInfo{}, fmt.Errorf("lease: %w", err)
	}
	return LeaseInfo{Node: l.Node, Attempts: l.Attempts, State: l.State, Epoch: l.Epoch, TTL: l.ttl(), Session: l.Session}, nil
}

func encodeLease(l *leaseBody, now time.Time) (body []byte, nonce string) {
	l.Nonce = newToken()
	l.Written = now.UTC().Format(time.RFC3339Nano)
	b, _ := json.Marshal(l) // strings and ints always encode
	return b, l.Nonce
}

// readLease reads the lease at key and returns it and its ETag if it holds
// token; ErrPrecondition if it holds another (or is unreadable).
func (p *Protocol) readLease(ctx context.Context, key, token string) (leaseBody, string, error) {
	o, err := p.store.Get(ctx, key, MaxLeaseBytes)
	if err != nil {
		return leaseBody{}, "", err
	}
	var l leaseBody
	if json.Unmarshal(o.Body, &l) != nil || l.Token != token {
		return leaseBody{}, "", fmt.Errorf("lease %s: held by token %q: %w", key, l.Token, store.ErrPrecondition)
	}
	return l, o.ETag, nil
}

// readBack resolves a lease write whose outcome is unknown: nil and the
// ETag if the lease holds our nonce; ErrPrecondition if it holds another
// node's write; ErrNotFound if there is none; ErrUnknown if it holds an
// earlier write of ours; any other error if we cannot tell.
func (p *Protocol) readBack(ctx context.Context, key, token, nonce string) (string, error) {
	l, etag, err := p.readLease(ctx, key, token)
	switch {
	case err != nil:
		return "", err
	case l.Nonce != nonce:
		return "", fmt.Errorf("lease %s: our write did not land: %w", key, store.ErrUnknown)
	}
	return etag, nil
}
