package schedule

import (
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	at := time.Date(2026, 12, 6, 19, 42, 7, 0, time.UTC)
	for _, tt := range []struct {
		expr string
		next time.Time // zero: refused
	}{
		{"*/5 * * * *", time.Date(2026, 12, 6, 19, 45, 0, 0, time.UTC)},
		{"0 2 * * *", time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)},
		{"@daily", time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)},
		{"@hourly", time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC)},
		{"@every 5s", time.Date(2026, 12, 6, 19, 42, 10, 0, time.UTC)},
		{"@every 1h", time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC)},
		{"", time.Time{}},
		{"* * *", time.Time{}},
		{"61 * * * *", time.Time{}},
		{"* * * * * *", time.Time{}}, // seconds are not a field here
		{"@every soon", time.Time{}},
		{"@every 500ms", time.Time{}},
		{"@every -5s", time.Time{}},
		{"@every 1.5s", time.Time{}},
		{"@fortnightly", time.Time{}},
	} {
		e, err := Parse(tt.expr)
		if tt.next.IsZero() {
			if err == nil {
				t.Errorf("Parse(%q) accepted", tt.expr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.expr, err)
			continue
		}
		if got := e.Next(at); !got.Equal(tt.next) {
			t.Errorf("Parse(%q).Next(%v) = %v, want %v", tt.expr, at, got, tt.next)
		}
	}
}

func TestLatestIsOnlyTheMostRecentMissedDueTime(t *testing.T) {
	every5, _ := Parse("@every 5s")
	nightly, _ := Parse("0 2 * * *")
	day := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name       string
		e          Expr
		after, now time.Time
		want       time.Time // zero: none due
	}{
		{"none due yet", every5, day.Add(10 * time.Second), day.Add(14 * time.Second), time.Time{}},
		{"one due", every5, day.Add(10 * time.Second), day.Add(16 * time.Second), day.Add(15 * time.Second)},
		{"due exactly now", every5, day.Add(10 * time.Second), day.Add(15 * time.Second), day.Add(15 * time.Second)},
		{"an hour down: the latest only", every5, day, day.Add(time.Hour + 3*time.Second), day.Add(time.Hour)},
		{"nightly, three nights down", nightly, day, day.Add(3*24*time.Hour + 5*time.Hour), day.Add(3*24*time.Hour + 2*time.Hour)},
		{"nightly, a month down", nightly, day, day.Add(30*24*time.Hour + time.Hour), day.Add(29*24*time.Hour + 2*time.Hour)},
		{"nightly, not yet", nightly, day.Add(2 * time.Hour), day.Add(20 * time.Hour), time.Time{}},
	} {
		got, ok := Latest(tt.e, tt.after, tt.now)
		if ok != !tt.want.IsZero() || !got.Equal(tt.want) {
			t.Errorf("%s: Latest = %v, %v; want %v", tt.name, got, ok, tt.want)
		}
	}
}

func TestNamesAndIDs(t *testing.T) {
	for name, ok := range map[string]bool{"nightly": true, "build.v2_x-1": true, "": false, "a/b": false, ".x": false,
		"-x": false, "a b": false, "é": false, string(make([]byte, 129)): false} {
		if err := CheckName(name); (err == nil) != ok {
			t.Errorf("CheckName(%q) = %v, want ok %v", name, err, ok)
		}
	}
	if got := SpecID("nightly", time.Date(2026, 12, 7, 2, 0, 0, 0, time.FixedZone("X", 3600))); got != "nightly-20261207T010000Z" {
		t.Errorf("SpecID = %q", got)
	}
	if DefKey("fleet/", "n") != "fleet/schedules/n.json" || MarkerKey("fleet", "n") != "fleet/schedules/n.last" {
		t.Errorf("keys %q %q", DefKey("fleet/", "n"), MarkerKey("fleet", "n"))
	}
}
