// A spec's output: docs/PROTOCOL.md, "Finish" (step 0) and "Intents" (prune,
// file). One home for its object format: output/<id>.txt holds the tail of
// what the cell printed, its metadata what run it came from.

package protocol

import (
	"context"
	"errors"
	"strconv"

	"github.com/cellos/fleetd/internal/store"
)

// Output is the tail of a run's output, written with its result.
type Output struct {
	Body []byte
	// Truncated: the run printed more than Body holds; Body is its end.
	Truncated bool
}

// Output object metadata; node, attempts and token as on the result record.
const (
	metaOutputExit      = "fleetd-exit"
	metaOutputTruncated = "fleetd-truncated"
)

// outputMetadata says which run the output came from: the same node, token
// and attempt as the result record written after it, so a reader can tell
// an output from a result of another run (see OutputInfo.Matches).
func (r Record) outputMetadata(o *Output) map[string]string {
	exit := ""
	if r.Result != nil && r.Result.StartErr == nil {
		exit = strconv.Itoa(r.Result.ExitCode)
		if r.Result.Signal != "" {
			exit = r.Result.Signal
		}
	}
	m := map[string]string{metaNode: r.node, metaToken: r.token, metaAttempts: strconv.Itoa(r.attempts),
		metaOutputTruncated: strconv.FormatBool(o.Truncated)}
	if exit != "" {
		m[metaOutputExit] = exit
	}
	return m
}

// writeOutput is step 0 of Finish: PUT output/<id>.txt, unconditional under
// the lease (only the holder writes a spec's output), so repeating it is
// harmless. It goes before the result: a result implies its output.
func (c *Claim) writeOutput(ctx context.Context, rec Record) error {
	if rec.Output == nil {
		return nil
	}
	return c.act(ctx, nil, stepWriteOutput, func(ctx context.Context) error {
		_, err := c.p.store.Put(ctx, c.p.cfg.Layout.OutputKey(c.id), rec.Output.Body, store.PutOptions{Metadata: rec.outputMetadata(rec.Output)})
		return err
	})
}

// deleteOutput removes the spec's output under c's lease, with the result it
// belongs to (prune) or before a result that has none (a filing). The key
// holds no spec bytes and nobody but the lease holder writes it, so the
// lease alone makes the delete ours.
func (c *Claim) deleteOutput(ctx context.Context, quit <-chan struct{}) error {
	return c.act(ctx, quit, "delete output", func(ctx context.Context) error {
		err := c.p.store.Delete(ctx, c.p.cfg.Layout.OutputKey(c.id), "")
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
}

// OutputInfo is what an output object's metadata says.
type OutputInfo struct {
	Node      string `json:"node,omitempty"`
	Attempt   int    `json:"attempt,omitempty"`
	Exit      string `json:"exit,omitempty"` // an exit code, or the signal's name
	Truncated bool   `json:"truncated"`
	token     string
}

// ParseOutput reads the metadata of an output object.
func ParseOutput(meta map[string]string) OutputInfo {
	o := OutputInfo{Node: meta[metaNode], Exit: meta[metaOutputExit], token: meta[metaToken]}
	o.Attempt, _ = strconv.Atoi(meta[metaAttempts])
	o.Truncated, _ = strconv.ParseBool(meta[metaOutputTruncated])
	return o
}

// Matches reports whether the output came from the run whose result record
// has meta: the output of an earlier run (before a requeue) does not.
func (o OutputInfo) Matches(resultMeta map[string]string) bool {
	return o.token != "" && o.token == resultMeta[metaToken]
}
