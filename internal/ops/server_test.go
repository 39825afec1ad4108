package ops

import (
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/depth"
)

// fakeAgent is an Agent with fixed answers.
type fakeAgent struct {
	lastPoll time.Time
	broken   error
}

func (a fakeAgent) LastPoll() time.Time { return a.lastPoll }
func (a fakeAgent) Cells() int          { return 0 }
func (a fakeAgent) HostBroken() error   { return a.broken }

func TestProbes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		agent     fakeAgent
		draining  bool
		healthz   int
		readyz    int
		readyBody string
	}{
		{"polling", fakeAgent{lastPoll: time.Now()}, false, 200, 200, "ready"},
		{"never polled", fakeAgent{}, false, 200, 503, "no successful poll"},
		{"broken host", fakeAgent{lastPoll: time.Now(), broken: errors.New("permission denied")}, false, 200, 503, "supervisor cannot be started: permission denied"},
		{"broken host, draining: the drain is the reason", fakeAgent{broken: errors.New("permission denied")}, true, 200, 503, "draining"},
	}
	for _, c := range cases {
		s := &server{cfg: Config{Agent: c.agent, Progress: NewProgress(time.Now()), Draining: func() bool { return c.draining },
			Concurrency: 2, PollInterval: time.Second, LeaseTTL: time.Minute, S3Timeout: time.Second}}
		for _, probe := range []struct {
			path    string
			handler http.HandlerFunc
			code    int
			body    string
		}{{"/healthz", s.healthz, c.healthz, ""}, {"/readyz", s.readyz, c.readyz, c.readyBody}} {
			w := httptest.NewRecorder()
			probe.handler(w, httptest.NewRequest(http.MethodGet, probe.path, nil))
			if w.Code != probe.code || !strings.Contains(w.Body.String(), probe.body) {
				t.Errorf("%s: %s = %d %q, want %d containing %q", c.name, probe.path, w.Code, w.Body.String(), probe.code, probe.body)
			}
		}
	}
}

func TestDepthFromTheLastPoll(t *testing.T) {
	t.Parallel()
	polled := false
	s := &server{cfg: Config{Depth: func() (depth.Lane, bool) {
		return depth.Lane{Lane: "gpu", Pending: 7, Running: 2, OldestPendingSeconds: 12.5, Source: "poll"}, polled
	}}}
	w := httptest.NewRecorder()
	s.depth(w, httptest.NewRequest(http.MethodGet, "/depth", nil))
	if w.Code != http.StatusServiceUnavailable {
		t.Errorf("before a poll: %d %q, want 503", w.Code, w.Body.String())
	}
	polled = true
	w = httptest.NewRecorder()
	s.depth(w, httptest.NewRequest(http.MethodGet, "/depth", nil))
	var got map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("after a poll: %d %q %v", w.Code, w.Body.String(), err)
	}
	want := map[string]any{"lane": "gpu", "pending": 7.0, "delayed": 0.0, "running": 2.0, "oldest_pending_seconds": 12.5, "at_least": false, "source": "poll"}
	if !maps.Equal(got, want) {
		t.Errorf("/depth = %v, want %v", got, want)
	}
}
