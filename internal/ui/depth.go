package ui

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/depth"
	"github.com/cellos/fleetd/internal/queueview"
	"github.com/cellos/fleetd/internal/store"
)

// depthCache keeps each lane's depth for snapshotReuse, so scalers polling
// at once cost the bucket one read per lane.
type depthCache struct {
	mu    sync.Mutex
	lanes map[string]depthRead
}

type depthRead struct {
	at time.Time
	l  depth.Lane
}

// maxDepthLanes bounds the cache: a lane name comes from the request.
const maxDepthLanes = 64

// depth serves a lane's depth for autoscalers (KEDA's metrics-api scaler):
// this UI's lane, or ?lane=NAME under the same prefix (?lane= is the flat
// layout). It reads queueview.Depth at most once a second per lane.
func (s *Server) depth(w http.ResponseWriter, r *http.Request) {
	layout := s.cfg.Layout
	lane := s.cfg.Lane
	if q := r.URL.Query(); q.Has("lane") {
		lane = strings.TrimSpace(q.Get("lane"))
		if strings.Contains(lane, "/") || len(lane) > 255 {
			http.Error(w, "fleetd ui: lane is a queue name: no /, at most 255 bytes", http.StatusBadRequest)
			return
		}
		layout = store.NewLayout(s.cfg.Prefix, lane)
	}
	l, err := s.laneDepth(r.Context(), lane, layout)
	if err != nil {
		s.cfg.Logger.Warn("read the lane's depth", "event", "ui.depth_failed", "lane", lane, "err", err)
		http.Error(w, "fleetd ui: "+err.Error(), http.StatusBadGateway)
		return
	}
	depth.Write(w, l)
}

func (s *Server) laneDepth(ctx context.Context, lane string, layout store.Layout) (depth.Lane, error) {
	s.depths.mu.Lock()
	defer s.depths.mu.Unlock()
	if c, ok := s.depths.lanes[lane]; ok && s.cfg.Now().Sub(c.at) < snapshotReuse {
		return c.l, nil
	}
	l, err := queueview.Depth(ctx, s.cfg.Store, layout, lane, s.cfg.limits())
	if err != nil {
		return l, err
	}
	if len(s.depths.lanes) >= maxDepthLanes {
		clear(s.depths.lanes)
	}
	s.depths.lanes[lane] = depthRead{at: s.cfg.Now(), l: l}
	return l, nil
}

// bearer reports whether r carries "Authorization: Bearer <token>": how a
// scaler, which keeps no session, presents CELLOS_FLEET_UI_TOKEN to /depth.
func (s secrets) bearer(r *http.Request) bool {
	given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && s.token != "" && s.tokenMatches(given)
}
