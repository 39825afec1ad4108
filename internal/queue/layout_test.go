package queue

import "testing"

func TestLayoutKeys(t *testing.T) {
	// The 0.5.1 key layout, byte for byte.
	tests := []struct {
		prefix, queue string
		want          string
	}{
		{"fleet", "", "fleet/pending/a.json"},
		{"fleet/", "", "fleet/pending/a.json"},
		{"fleet//", "", "fleet/pending/a.json"},
		{"org/fleet", "gpu", "org/fleet/gpu/pending/a.json"},
		{"fleet", "  gpu ", "fleet/gpu/pending/a.json"},
		{"", "", "pending/a.json"},
		{"", "q", "q/pending/a.json"},
	}
	for _, tt := range tests {
		if got := NewLayout(tt.prefix, tt.queue).Key(Pending, "a"); got != tt.want {
			t.Errorf("NewLayout(%q, %q).Key(pending, a) = %q, want %q", tt.prefix, tt.queue, got, tt.want)
		}
	}
	l := NewLayout("fleet", "")
	for s, want := range map[State]string{Claimed: "fleet/claimed/a.json", Completed: "fleet/completed/a.json", Failed: "fleet/failed/a.json", Leases: "fleet/leases/a.json"} {
		if got := l.Key(s, "a"); got != want {
			t.Errorf("Key(%s) = %q, want %q", s, got, want)
		}
	}
}

func TestLayoutID(t *testing.T) {
	l := NewLayout("fleet", "")
	tests := []struct {
		key    string
		want   string
		wantOK bool
	}{
		{"fleet/pending/job-1.json", "job-1", true},
		{"fleet/pending/job.v2.json", "job.v2", true},
		{"fleet/pending/job-1.JSON", "", false},
		{"fleet/pending/job-1.txt", "", false},
		{"fleet/pending/sub/job-1.json", "", false},
		{"fleet/pending/.json", "", false},
		{"fleet/claimed/job-1.json", "", false},
		{"other/pending/job-1.json", "", false},
	}
	for _, tt := range tests {
		id, ok := l.ID(Pending, tt.key)
		if id != tt.want || ok != tt.wantOK {
			t.Errorf("ID(%q) = %q, %v; want %q, %v", tt.key, id, ok, tt.want, tt.wantOK)
		}
	}
}
