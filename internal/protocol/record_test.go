package protocol

import (
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/exec"
)

// TestParseRecordReadsWhatFinishWrites: the tools read a result record
// through ParseRecord, so it must give back every field metadata() writes.
func TestParseRecordReadsWhatFinishWrites(t *testing.T) {
	started := time.Date(2025, 1, 2, 3, 4, 5, 6e6, time.UTC)
	for _, tt := range []struct {
		name     string
		result   *exec.Result
		wantExit *int
		wantSig  string
	}{
		{"exit", &exec.Result{ExitCode: 3}, new(3), ""},
		{"exit 0", &exec.Result{}, new(0), ""},
		{"signal", &exec.Result{ExitCode: -1, Signal: "SIGKILL"}, nil, "SIGKILL"},
		{"never ran", nil, nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := Record{Outcome: Failed, TimedOut: true, Reason: "timeout\n<x>", Started: started, Finished: started.Add(time.Second),
				Result: tt.result, node: "n1", token: "tok", attempts: 2}
			got := ParseRecord(rec.metadata())
			if got.Outcome != "failed" || got.Reason != "timeout?<x>" || got.Node != "n1" || got.Attempts != 2 {
				t.Errorf("ParseRecord = %+v", got)
			}
			if !got.Started.Equal(started) || !got.Finished.Equal(started.Add(time.Second)) {
				t.Errorf("times = %v, %v", got.Started, got.Finished)
			}
			if (got.ExitCode == nil) != (tt.wantExit == nil) || got.ExitCode != nil && *got.ExitCode != *tt.wantExit {
				t.Errorf("ExitCode = %v, want %v", got.ExitCode, tt.wantExit)
			}
			if got.Signal != tt.wantSig {
				t.Errorf("Signal = %q, want %q", got.Signal, tt.wantSig)
			}
		})
	}
	if got := ParseRecord(nil); got.Outcome != "" || got.ExitCode != nil || !got.Finished.IsZero() {
		t.Errorf("ParseRecord(nil) = %+v, want zero", got)
	}
}

func TestLeaseStale(t *testing.T) {
	l, err := ParseLease([]byte(`{"node":"n","ttl_ms":3000,"attempts":1,"state":"running"}`))
	if err != nil || l.TTL != 3*time.Second {
		t.Fatalf("ParseLease = %+v, %v", l, err)
	}
	// LastModified and Date have 1-second resolution: a lease is stale only
	// past ttl + 1 s.
	if Stale(4*time.Second, l.TTL) || !Stale(4*time.Second+time.Millisecond, l.TTL) {
		t.Errorf("Stale around ttl + 1 s is wrong")
	}
}
