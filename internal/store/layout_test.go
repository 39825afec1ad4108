package store

import (
	"errors"
	"strings"
	"testing"
)

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
	for s, want := range map[Area]string{Claimed: "fleet/claimed/a.json", Completed: "fleet/completed/a.json", Failed: "fleet/failed/a.json", Leases: "fleet/leases/a.json"} {
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

func TestLayoutIDKeyLength(t *testing.T) {
	// The longest key of an id is its completed/ key; it must fit in S3's 1,024 bytes.
	tests := []struct {
		prefix, queue string
		idBytes       int
		wantOK        bool
	}{
		{"fleet", "", 1003, true},  // fleet/completed/<id>.json: 1,024 bytes
		{"fleet", "", 1004, false}, // its pending/ key (1,023 bytes) is a valid S3 key
		{"fleet", "", 1005, false}, // pending/ key of 1,024 bytes
		{"fleet", "lane", 998, true},
		{"fleet", "lane", 1000, false},
		{"", "", 1009, true},
		{"", "", 1010, false},
	}
	for _, tt := range tests {
		l := NewLayout(tt.prefix, tt.queue)
		id := strings.Repeat("x", tt.idBytes)
		got, err := l.ParseID(Pending, l.Key(Pending, id))
		if (err == nil) != tt.wantOK || tt.wantOK && got != id {
			t.Errorf("%q/%q: ParseID of a %d-byte id: err %v, want ok %v", tt.prefix, tt.queue, tt.idBytes, err, tt.wantOK)
		}
		if !tt.wantOK && !errors.Is(err, ErrIDTooLong) {
			t.Errorf("%q/%q: %d-byte id: err %v, want ErrIDTooLong", tt.prefix, tt.queue, tt.idBytes, err)
		}
		if _, ok := l.ID(Leases, l.Key(Leases, id)); ok != tt.wantOK {
			t.Errorf("%q/%q: ID(leases) of a %d-byte id ok = %v, want %v", tt.prefix, tt.queue, tt.idBytes, ok, tt.wantOK)
		}
		if err := l.CheckID(id); (err == nil) != tt.wantOK {
			t.Errorf("%q/%q: CheckID of a %d-byte id = %v", tt.prefix, tt.queue, tt.idBytes, err)
		}
	}
	// Bytes, not characters: 502 two-byte runes are 1,004 bytes.
	if err := NewLayout("fleet", "").CheckID(strings.Repeat("é", 502)); !errors.Is(err, ErrIDTooLong) {
		t.Errorf("CheckID of 1,004 bytes of é = %v, want ErrIDTooLong", err)
	}
}

func TestLayoutParseIDReasons(t *testing.T) {
	l := NewLayout("fleet", "")
	for key, want := range map[string]error{
		"fleet/pending/a.json":     nil,
		"fleet/pending/a.txt":      ErrNotWork,
		"fleet/pending/sub/a.json": ErrNotWork,
		"fleet/pending/.json":      ErrNotWork,
		"other/pending/a.json":     ErrNotWork,
	} {
		if _, err := l.ParseID(Pending, key); !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Errorf("ParseID(%q) = %v, want %v", key, err, want)
		}
	}
}
