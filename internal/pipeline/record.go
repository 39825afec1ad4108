package pipeline

import (
	"strconv"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/exec"
)

// Object metadata keys (sent as x-amz-meta-fleetd-*). The SDK lower-cases
// metadata keys on read, so these are lower-case.
const (
	metaNode       = "fleetd-node"
	metaAttempts   = "fleetd-attempts"
	metaToken      = "fleetd-token"
	metaOutcome    = "fleetd-outcome"
	metaReason     = "fleetd-reason"
	metaStarted    = "fleetd-started"
	metaFinished   = "fleetd-finished"
	metaDurationMS = "fleetd-duration-ms"
	metaExitCode   = "fleetd-exit-code"
	metaSignal     = "fleetd-signal"
)

// maxReason keeps a result record well inside S3's 2 KB metadata limit.
const maxReason = 512

// record is the result record written as metadata on completed/ and failed/
// objects, beside the unchanged spec bytes.
type record struct {
	node     string
	token    string
	attempts int
	outcome  string // completed, failed, rejected, abandoned
	reason   string
	started  time.Time
	finished time.Time
	result   *exec.Result
}

func (r record) metadata() map[string]string {
	m := map[string]string{
		metaNode:     r.node,
		metaOutcome:  r.outcome,
		metaFinished: r.finished.UTC().Format(time.RFC3339Nano),
	}
	if r.token != "" {
		m[metaToken] = r.token
	}
	if r.attempts > 0 {
		m[metaAttempts] = strconv.Itoa(r.attempts)
	}
	if r.reason != "" {
		m[metaReason] = asciiHeader(r.reason)
	}
	if !r.started.IsZero() {
		m[metaStarted] = r.started.UTC().Format(time.RFC3339Nano)
		m[metaDurationMS] = strconv.FormatInt(r.finished.Sub(r.started).Milliseconds(), 10)
	}
	if r.result != nil && r.result.StartErr == nil {
		if r.result.Signal != "" {
			m[metaSignal] = r.result.Signal
		} else {
			m[metaExitCode] = strconv.Itoa(r.result.ExitCode)
		}
	}
	return m
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
