package main

import (
	"os"
	"path/filepath"
	"syscall"
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
	cfg := Config{PollInterval: 5 * time.Second, LeaseTTL: time.Minute, S3Timeout: 10 * time.Second}
	if got, want := livenessWindow(cfg), 80*time.Second; got != want {
		t.Errorf("window with the defaults = %v, want %v", got, want)
	}
	// The store self-test retries every 30 s at worst: the window leaves room.
	cfg = Config{PollInterval: 100 * time.Millisecond, LeaseTTL: 3 * time.Second, S3Timeout: time.Second}
	if got := livenessWindow(cfg); got < 30*time.Second+cfg.S3Timeout {
		t.Errorf("window %v is shorter than a self-test retry", got)
	}
}

// TestBusyAgentIsReadyAndLive: with its one slot running a long cell and
// another spec pending, an agent keeps listing once a poll interval (a
// fetched page is a successful poll) and is ready and live.
func TestBusyAgentIsReadyAndLive(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	release := filepath.Join(t.TempDir(), "release")
	b.submit("long", map[string]any{"waitFor": release})
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_CONCURRENCY": "1", "CELLOS_FLEET_POLL_INTERVAL_MS": "100",
		"CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0"})
	addr := metricsAddr(t, a)
	a.logs.await(t, `"msg":"cell started"`, 1)
	b.submit("next", map[string]any{})
	lastPoll := func() float64 {
		return sample(t, scrape(t, addr), "fleetd_last_poll_success_timestamp_seconds")
	}
	// Busy for over 3 poll intervals, the lister still records fresh polls.
	busySince := float64(time.Now().UnixNano()) / 1e9
	deadline := time.Now().Add(30 * time.Second)
	for lastPoll() < busySince+0.5 {
		if time.Now().After(deadline) {
			t.Fatal("no successful poll while the only slot was busy")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q on a busy agent, want 200", code, body)
	}
	if code, body := httpGet(t, "http://"+addr+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d %q on a busy agent, want 200", code, body)
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a.logs.await(t, `"msg":"spec finalised"`, 2)
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q once idle, want 200", code, body)
	}
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
