package e2e

// deploy/keda: the metrics-api ScaledObject's valueLocation finds a number in
// what /depth serves — fleetd ui's and an agent's, from the real binary on
// versitygw. (The ScaledObjects' static checks are in deploy/.)

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// scaledObjectTrigger reads the metadata of the one trigger of the
// ScaledObject in a KEDA manifest (deploy/ checks the rest of it).
func scaledObjectTrigger(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	for {
		var d struct {
			Kind string `yaml:"kind"`
			Spec struct {
				Triggers []struct {
					Metadata map[string]string `yaml:"metadata"`
				} `yaml:"triggers"`
			} `yaml:"spec"`
		}
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			t.Fatalf("%s: no ScaledObject", path)
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d.Kind == "ScaledObject" {
			if len(d.Spec.Triggers) != 1 {
				t.Fatalf("%s: %d triggers, want 1", path, len(d.Spec.Triggers))
			}
			return d.Spec.Triggers[0].Metadata
		}
	}
}

// valueAt reads a GJSON path of plain keys (a.b.c), as KEDA's metrics-api
// scaler reads valueLocation, and wants a number there.
func valueAt(t *testing.T, body []byte, path string) float64 {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("/depth is not JSON: %v: %q", err, body)
	}
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("valueLocation %q: %q is not an object in %s", path, k, body)
		}
		if v, ok = m[k]; !ok {
			t.Fatalf("valueLocation %q: no %q in %s", path, k, body)
		}
	}
	n, ok := v.(float64)
	if !ok {
		t.Fatalf("valueLocation %q holds %v, not a number", path, v)
	}
	return n
}

// The ScaledObject's valueLocation, against /depth of the real fleetd ui
// (with the bearer token, as KEDA sends it) and of a real agent.
func TestKEDAValueLocationFindsTheDepth(t *testing.T) {
	t.Parallel()
	m := scaledObjectTrigger(t, "../../deploy/keda/scaledobject.yaml")
	b := newBucket(t)
	for _, id := range []string{"d1", "d2", "d3"} {
		b.submit(id, map[string]any{}, pool("elsewhere")) // stays pending
	}
	const token = "a-token-for-the-scaler"
	ui := startUIWith(t, b, []string{"CELLOS_FLEET_UI_TOKEN=" + token})
	get := func(u string, token string) []byte {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %d %q", u, resp.StatusCode, body)
		}
		return body
	}
	path := strings.TrimPrefix(m["url"], "http://fleetd-ui:8080")
	if got := valueAt(t, get(strings.TrimSuffix(ui, "/")+path, token), m["valueLocation"]); got != 3 {
		t.Errorf("fleetd ui: %s = %v, want the 3 pending", m["valueLocation"], got)
	}

	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0", "CELLOS_FLEET_POOL_ID": "mine"})
	a.logs.awaitEvent(t, "ops.serving", 1)
	addr, _ := a.logs.events("ops.serving")[0]["addr"].(string)
	a.logs.awaitEvent(t, "lister.listed", 1) // its first poll: /depth has something to say
	if got := valueAt(t, get("http://"+addr+"/depth", ""), m["valueLocation"]); got != 3 {
		t.Errorf("agent: %s = %v, want the 3 pending", m["valueLocation"], got)
	}
}
