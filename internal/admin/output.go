package admin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/config"
	"github.com/cellos/fleetd/internal/protocol"
	"github.com/cellos/fleetd/internal/store"
)

// ErrNoOutput: the spec has no output object.
var ErrNoOutput = errors.New("no output")

// SpecOutput is the tail of a spec's last run's output, as `fleetd logs`
// shows it.
type SpecOutput struct {
	ID      string    `json:"id"`
	Key     string    `json:"key"`
	Written time.Time `json:"written"`
	protocol.OutputInfo
	Bytes  int    `json:"bytes"`
	Output string `json:"output"`
}

// Output reads spec id's output. ErrNoOutput: there is none (the spec has not
// finished, ran with output off, was cancelled or rejected, or was pruned).
func (a *Admin) Output(ctx context.Context, id string) (SpecOutput, error) {
	if err := a.layout.CheckID(id); err != nil {
		return SpecOutput{}, usagef("logs: %q is not a spec id: %v", id, err)
	}
	key := a.layout.OutputKey(id)
	o, err := a.store.Get(ctx, key, config.MaxOutputBytes) // the largest output an agent writes
	switch {
	case errors.Is(err, store.ErrNotFound):
		return SpecOutput{}, fmt.Errorf("logs: spec %s has no output at %s (not finished yet, run with output off, cancelled, rejected or pruned): %w", id, key, ErrNoOutput)
	case err != nil:
		return SpecOutput{}, fmt.Errorf("logs: read %s: %w", key, err)
	}
	return SpecOutput{ID: id, Key: key, Written: o.LastModified, OutputInfo: protocol.ParseOutput(o.Metadata),
		Bytes: len(o.Body), Output: string(o.Body)}, nil
}
