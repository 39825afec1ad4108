package ops

import (
	"testing"
	"time"
)

func TestHealthLiveAndReady(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	base := health{now: now, concurrency: 4, pollInterval: 5 * time.Second, window: 80 * time.Second}
	cases := []struct {
		name  string
		edit  func(*health)
		live  bool
		ready bool
	}{
		{"idle, listing every interval", func(h *health) { h.lastPoll, h.lastProgress = ago(2*time.Second), ago(time.Hour) }, true, true},
		{"never listed, just started", func(h *health) { h.lastProgress = ago(10 * time.Second) }, true, false},
		{"S3 down: failed attempts keep it live, not ready", func(h *health) { h.lastPoll, h.lastProgress = ago(time.Hour), ago(3*time.Second) }, true, false},
		{"busy: every slot running, lister waiting", func(h *health) {
			h.lastPoll, h.lastProgress, h.lastStart, h.running = ago(time.Hour), ago(10*time.Second), ago(time.Hour), 4
		}, true, true},
		{"busy: a cell started just now", func(h *health) {
			h.lastPoll, h.lastProgress, h.lastStart, h.running = ago(time.Hour), ago(time.Second), ago(time.Second), 3
		}, true, true},
		{"wedged: nothing for longer than the window", func(h *health) {
			h.lastPoll, h.lastProgress, h.lastStart = ago(81*time.Second), ago(90*time.Second), ago(time.Hour)
		}, false, false},
		{"wedged although a cell started long ago", func(h *health) {
			h.lastPoll, h.lastProgress, h.lastStart, h.running = ago(time.Hour), ago(2*time.Minute), ago(time.Hour), 1
		}, false, false},
		{"draining is never wedged, never ready", func(h *health) {
			h.draining, h.lastPoll, h.lastProgress = true, ago(time.Hour), ago(time.Hour)
		}, true, false},
	}
	for _, c := range cases {
		h := base
		c.edit(&h)
		if err := h.live(); (err == nil) != c.live {
			t.Errorf("%s: live() = %v, want live %v", c.name, err, c.live)
		}
		if msg, err := h.ready(); (err == nil) != c.ready {
			t.Errorf("%s: ready() = %q, %v, want ready %v", c.name, msg, err, c.ready)
		}
	}
}

func TestLivenessWindow(t *testing.T) {
	if got, want := livenessWindow(5*time.Second, time.Minute, 10*time.Second), 80*time.Second; got != want {
		t.Errorf("window with the defaults = %v, want %v", got, want)
	}
	// The store self-test retries every 30 s at worst: the window leaves room.
	if got := livenessWindow(100*time.Millisecond, 3*time.Second, time.Second); got < 31*time.Second {
		t.Errorf("window %v is shorter than a self-test retry", got)
	}
}
