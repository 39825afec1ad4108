package protocol

import (
	"strconv"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/exec"
)

// Object metadata keys (sent as x-amz-meta-fleetd-*). The SDK lower-cases
// metadata keys on read, so these are lower-case.
const (
	metaNode        = "fleetd-node"
	metaAttempts    = "fleetd-attempts"
	metaToken       = "fleetd-token"
	metaPendingETag = "fleetd-pending-etag"
	metaOutcome     = "fleetd-outcome"
	metaReason      = "fleetd-reason"
	metaStarted     = "fleetd-started"
	metaFinished    = "fleetd-finished"
	metaDurationMS  = "fleetd-duration-ms"
	metaExitCode    = "fleetd-exit-code"
	metaSignal      = "fleetd-signal"
)

// Outcome is what a result record says of a spec (fleetd-outcome).
// Completed goes to completed/, the others to failed/.
type Outcome string

// The record outcomes.
const (
	Completed Outcome = "completed"
	Failed    Outcome = "failed"
	Rejected  Outcome = "rejected"  // never run: a bad spec
	Cancelled Outcome = "cancelled" // by fleetd cancel
	Abandoned Outcome = "abandoned" // max attempts reached
)

// Ending is how a spec left a node: the outcome label of
// fleetd_cells_finished_total. Every record outcome is one; these are the
// others.
type Ending string

const (
	Timeout  Ending = "timeout"  // stopped by the cell timeout: recorded failed
	Released Ending = "released" // returned to pending/: drain, lapse or recovery
	Lost     Ending = "lost"     // lease taken over while this node held it
	Retried  Ending = "retried"  // failed, returned to run again after a backoff
)

// EndingLabels returns every ending, for whoever must know them all in
// advance: metrics show each at zero from the start.
func EndingLabels() []string {
	return []string{string(Completed), string(Failed), string(Timeout), string(Rejected),
		string(Released), string(Abandoned), string(Lost), string(Cancelled), string(Retried)}
}

// ending is how the record counts in fleetd_cells_finished_total.
func (r Record) ending() Ending {
	if r.TimedOut {
		return Timeout
	}
	return Ending(r.Outcome)
}

// maxReason keeps a result record well inside S3's 2 KB metadata limit.
const maxReason = 512

// Record is the result record written as metadata on completed/ and failed/
// objects, beside the unchanged spec bytes.
type Record struct {
	Outcome Outcome
	// TimedOut: the cell timeout stopped the run (Outcome Failed, counted
	// as the Timeout ending).
	TimedOut bool
	Reason   string
	Started  time.Time
	Finished time.Time
	Result   *exec.Result
	// Output, if set, is written to output/<id>.txt before the result
	// (WriteResult only).
	Output *Output

	node     string
	token    string
	attempts int
	retry    RetryState // the runs before this one that failed and were retried
}

func (r Record) metadata() map[string]string {
	m := map[string]string{
		metaNode:     r.node,
		metaOutcome:  string(r.Outcome),
		metaFinished: r.Finished.UTC().Format(time.RFC3339Nano),
		metaToken:    r.token,
	}
	if r.attempts > 0 {
		m[metaAttempts] = strconv.Itoa(r.attempts)
	}
	if r.Reason != "" {
		m[metaReason] = asciiHeader(r.Reason)
	}
	if r.retry.Done > 0 {
		// Every failed run's reason, this one's last if it failed too.
		reasons := r.retry.Reasons
		if r.Outcome != Completed && r.Reason != "" {
			reasons = append(append([]string(nil), reasons...), r.Reason)
		}
		r.retry.Reasons = reasons
	}
	for k, v := range r.retry.metadata() {
		m[k] = v
	}
	if !r.Started.IsZero() {
		m[metaStarted] = r.Started.UTC().Format(time.RFC3339Nano)
		m[metaDurationMS] = strconv.FormatInt(r.Finished.Sub(r.Started).Milliseconds(), 10)
	}
	if r.Result != nil && r.Result.StartErr == nil {
		if r.Result.Signal != "" {
			m[metaSignal] = r.Result.Signal
		} else {
			m[metaExitCode] = strconv.Itoa(r.Result.ExitCode)
		}
	}
	return m
}

// RecordInfo is what a result record says, for the queue tools. A field the
// record lacks (a result filed by cellos-fleet 0.5.1 or by hand has none) is
// zero; an unparsable time or number is zero too.
type RecordInfo struct {
	Outcome  string
	Reason   string
	Node     string
	Attempts int
	// Retried is how many failed runs were retried; Reasons their reasons,
	// oldest first (with the last run's, when it failed too).
	Retried  int
	Reasons  []string
	Started  time.Time
	Finished time.Time
	// ExitCode is set when the supervisor exited; Signal when a signal ended it.
	ExitCode *int
	Signal   string
}

// ParseRecord reads the result record from the metadata of a completed/ or
// failed/ object.
func ParseRecord(meta map[string]string) RecordInfo {
	r := RecordInfo{
		Outcome: meta[metaOutcome],
		Reason:  meta[metaReason],
		Node:    meta[metaNode],
		Signal:  meta[metaSignal],
	}
	r.Attempts, _ = strconv.Atoi(meta[metaAttempts])
	retry := ParseRetry(meta)
	r.Retried, r.Reasons = retry.Done, retry.Reasons
	r.Started, _ = time.Parse(time.RFC3339Nano, meta[metaStarted])
	r.Finished, _ = time.Parse(time.RFC3339Nano, meta[metaFinished])
	if v, ok := meta[metaExitCode]; ok {
		if n, err := strconv.Atoi(v); err == nil {
			r.ExitCode = &n
		}
	}
	return r
}

// asciiHeader makes s safe as an HTTP header value: printable ASCII, bounded.
func asciiHeader(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
	if len(s) > maxReason {
		s = s[:maxReason]
	}
	return s
}
