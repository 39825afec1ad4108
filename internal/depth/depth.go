// Package depth is the depth of a queue lane as autoscalers read it: one
// JSON object whose numbers sit at the top level, so KEDA's metrics-api
// scaler names one with its valueLocation ("pending"), with no Prometheus in
// between. The agent's metrics address and fleetd ui serve it at /depth.
package depth

import (
	"encoding/json"
	"net/http"
)

// Lane is how deep one lane is.
type Lane struct {
	// Lane is CELLOS_FLEET_QUEUE_NAME ("" for the flat layout).
	Lane string `json:"lane"`
	// Pending is the number of specs in pending/; a lower bound when AtLeast.
	Pending int `json:"pending"`
	// Delayed is the number of specs waiting for a time before they may run:
	// always 0, as fleetd has no delayed specs yet. Present so a scaler can
	// name it now.
	Delayed int `json:"delayed"`
	// Running is the number of specs in flight: the lane's leases (fleetd
	// ui), or the cells of this agent (an agent's metrics address).
	Running int `json:"running"`
	// OldestPendingSeconds is the age of the oldest pending spec listed, on
	// the store's clock; 0 when none is pending.
	OldestPendingSeconds float64 `json:"oldest_pending_seconds"`
	// AtLeast: a listing stopped at its limit, so the counts are lower bounds.
	AtLeast bool `json:"at_least"`
	// Source says where the numbers come from: "poll" (the agent's last
	// listing of pending/, no request of its own) or "listing" (fleetd ui
	// listed pending/ and leases/ for it).
	Source string `json:"source"`
}

// Write answers with l as JSON, never cached.
func Write(w http.ResponseWriter, l Lane) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(l)
}
