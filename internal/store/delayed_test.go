package store

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDelayedKeys(t *testing.T) {
	l := NewLayout("fleet", "lane")
	due := time.Date(2026, 12, 7, 2, 0, 0, 250e6, time.FixedZone("CET", 3600))
	key := l.DelayedKey("job-1", due)
	if key != "fleet/lane/pending/.delayed/20261207T010000.250Z/job-1.json" {
		t.Fatalf("DelayedKey = %q", key)
	}
	for _, tt := range []struct {
		key  string
		id   string
		due  time.Time
		want error
	}{
		{key, "job-1", due, nil},
		{"fleet/lane/pending/.delayed/20261207T020000Z/nightly.json", "nightly", time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC), nil},
		{"fleet/lane/pending/job-1.json", "", time.Time{}, ErrNotDelayed},
		{"fleet/lane/pending/.delayed/tomorrow/job-1.json", "", time.Time{}, ErrNotDelayed},
		{"fleet/lane/pending/.delayed/20261207T020000Z/job-1.txt", "", time.Time{}, ErrNotDelayed},
		{"fleet/lane/pending/.delayed/20261207T020000Z/a/b.json", "", time.Time{}, ErrNotDelayed},
		{"fleet/lane/pending/.delayed/20261207T020000Z/.json", "", time.Time{}, ErrNotWork},
		{"fleet/lane/pending/.delayed/20261207T020000Z/" + strings.Repeat("x", 1000) + ".json", "", time.Time{}, ErrIDTooLong},
	} {
		id, got, err := l.ParseDelayed(tt.key)
		if !errors.Is(err, tt.want) || id != tt.id || !got.Equal(tt.due) {
			t.Errorf("ParseDelayed(%q) = %q, %v, %v; want %q, %v, %v", tt.key, id, got, err, tt.id, tt.due, tt.want)
		}
	}
	// Delayed keys sort by due time, after the pause marker and before ids
	// of letters and digits, so they are on the listing's first page.
	if a, b := l.DelayedKey("z", due), l.DelayedKey("a", due.Add(time.Millisecond)); a >= b {
		t.Errorf("%q sorts after %q", a, b)
	}
	if p := l.PauseKey(); p >= l.DelayedDir() || l.DelayedDir() >= l.Key(Pending, "0") {
		t.Errorf("order of %q, %q, %q: want the pause marker, then delayed specs, then ids", p, l.DelayedDir(), l.Key(Pending, "0"))
	}
	// And they are not work to the claim.
	if _, ok := l.ID(Pending, key); ok {
		t.Errorf("%s is work to the claim", key)
	}
}
