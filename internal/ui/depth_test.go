package ui

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/depth"
)

func (h *harness) depth(path string, header map[string]string) (int, depth.Lane) {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.srv.URL+path, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var l depth.Lane
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
			h.t.Fatalf("%s: %v", path, err)
		}
	}
	return resp.StatusCode, l
}

func TestDepthCountsTheLane(t *testing.T) {
	store := queueFixture()
	store.put("fleet/gpu/pending/g1.json", object{body: []byte(`{}`), age: 5 * time.Second})
	store.put("fleet/gpu/pending/!paused", object{age: time.Hour}) // not work
	h := setup(t, store, nil)
	code, l := h.depth("/depth", nil)
	// p1, p2, p3, old (notes.txt is not work); run-a's and run-b's leases.
	if code != 200 || l.Pending != 4 || l.Running != 2 || l.Delayed != 0 || l.OldestPendingSeconds < 89 || l.Lane != "" || l.AtLeast || l.Source != "listing" {
		t.Errorf("/depth = %d %+v", code, l)
	}
	lists := store.lists
	if _, again := h.depth("/depth", nil); again != l || store.lists != lists {
		t.Errorf("a second ask within a second listed %d more times, or differs: %+v", store.lists-lists, again)
	}
	*h.clock = h.clock.Add(2 * time.Second)
	h.depth("/depth", nil)
	if store.lists == lists {
		t.Error("the depth was not read again after a second")
	}
	if code, l := h.depth("/depth?lane=gpu", nil); code != 200 || l.Lane != "gpu" || l.Pending != 1 || l.Running != 0 || l.OldestPendingSeconds > 60 {
		t.Errorf("/depth?lane=gpu = %d %+v", code, l)
	}
	if code, _ := h.depth("/depth?lane=a/b", nil); code != http.StatusBadRequest {
		t.Errorf("/depth?lane=a/b = %d, want 400", code)
	}
}

func TestDepthLimits(t *testing.T) {
	store := queueFixture()
	h := setup(t, store, func(c *Config) { c.KeyLimit, c.LeaseLimit = 3, 1 })
	if code, l := h.depth("/depth", nil); code != 200 || l.Pending != 3 || l.Running != 1 || !l.AtLeast {
		t.Errorf("/depth at the limits = %d %+v, want lower bounds marked at_least", code, l)
	}
}

// A scaler keeps no session: with a token, /depth takes it as a bearer
// token, and nothing else does.
func TestDepthBearerToken(t *testing.T) {
	h := setup(t, queueFixture(), func(c *Config) { c.Token = "s3cret-token" })
	for _, tt := range []struct {
		path, auth string
		want       int
	}{
		{"/depth", "", http.StatusUnauthorized},
		{"/depth", "Bearer wrong", http.StatusUnauthorized},
		{"/depth", "Bearer s3cret-token", http.StatusOK},
		{"/depth", "s3cret-token", http.StatusUnauthorized},
		{"/live", "Bearer s3cret-token", http.StatusUnauthorized},
	} {
		if code, _ := h.depth(tt.path, map[string]string{"Authorization": tt.auth}); code != tt.want {
			t.Errorf("%s with %q = %d, want %d", tt.path, tt.auth, code, tt.want)
		}
	}
}
