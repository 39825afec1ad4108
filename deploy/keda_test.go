package deploy

// deploy/keda: the ScaledObjects have the fields KEDA requires. (That the
// metrics-api one's valueLocation finds a number in what the real /depth
// serves is checked in test/e2e.)

import (
	"errors"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// kedaDoc is the part of a KEDA or Kubernetes object these tests read.
type kedaDoc struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec struct {
		ScaleTargetRef struct {
			Name string `yaml:"name"`
		} `yaml:"scaleTargetRef"`
		MinReplicaCount *int `yaml:"minReplicaCount"`
		MaxReplicaCount int  `yaml:"maxReplicaCount"`
		Triggers        []struct {
			Type              string            `yaml:"type"`
			Metadata          map[string]string `yaml:"metadata"`
			AuthenticationRef *struct {
				Name string `yaml:"name"`
			} `yaml:"authenticationRef"`
		} `yaml:"triggers"`
		SecretTargetRef []struct {
			Parameter, Name, Key string
		} `yaml:"secretTargetRef"`
	} `yaml:"spec"`
	StringData map[string]string `yaml:"stringData"`
}

func kedaDocs(t *testing.T, path string) map[string]kedaDoc {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	docs := map[string]kedaDoc{}
	dec := yaml.NewDecoder(f)
	for {
		var d kedaDoc
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		docs[d.Kind] = d
	}
	return docs
}

// checkScaledObject checks what KEDA requires of every ScaledObject.
func checkScaledObject(t *testing.T, so kedaDoc, trigger string) {
	t.Helper()
	if so.APIVersion != "keda.sh/v1alpha1" || so.Metadata.Name == "" {
		t.Errorf("ScaledObject %q: apiVersion %q", so.Metadata.Name, so.APIVersion)
	}
	// It scales the runner Deployment of ../kubernetes.yaml.
	if so.Spec.ScaleTargetRef.Name != "fleetd" {
		t.Errorf("scaleTargetRef.name %q, want the Deployment fleetd", so.Spec.ScaleTargetRef.Name)
	}
	if so.Spec.MaxReplicaCount < 1 || so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount > so.Spec.MaxReplicaCount {
		t.Errorf("replica counts min %v max %d", so.Spec.MinReplicaCount, so.Spec.MaxReplicaCount)
	}
	if len(so.Spec.Triggers) != 1 || so.Spec.Triggers[0].Type != trigger {
		t.Fatalf("triggers %+v, want one %s", so.Spec.Triggers, trigger)
	}
}

func TestKEDAScaledObjects(t *testing.T) {
	t.Parallel()
	docs := kedaDocs(t, "keda/scaledobject.yaml")
	so, ok := docs["ScaledObject"]
	if !ok {
		t.Fatal("deploy/keda/scaledobject.yaml has no ScaledObject")
	}
	checkScaledObject(t, so, "metrics-api")
	m := so.Spec.Triggers[0].Metadata
	for _, f := range []string{"url", "valueLocation", "targetValue"} {
		if m[f] == "" {
			t.Errorf("metrics-api trigger lacks %s", f)
		}
	}
	if _, err := strconv.ParseFloat(m["targetValue"], 64); err != nil {
		t.Errorf("targetValue %q is not a number", m["targetValue"])
	}
	if m["format"] != "" && m["format"] != "json" {
		t.Errorf("format %q, want json", m["format"])
	}
	u, err := url.Parse(m["url"])
	if err != nil || u.Path != "/depth" {
		t.Errorf("url %q: want fleetd ui's /depth", m["url"])
	}
	// The bearer token comes from the Secret fleetd ui reads its token from.
	ta, sec := docs["TriggerAuthentication"], docs["Secret"]
	if m["authMode"] != "bearer" || so.Spec.Triggers[0].AuthenticationRef == nil || so.Spec.Triggers[0].AuthenticationRef.Name != ta.Metadata.Name {
		t.Errorf("authMode %q, authenticationRef %+v: want bearer, the TriggerAuthentication %q", m["authMode"], so.Spec.Triggers[0].AuthenticationRef, ta.Metadata.Name)
	}
	if len(ta.Spec.SecretTargetRef) != 1 || ta.Spec.SecretTargetRef[0].Parameter != "token" || ta.Spec.SecretTargetRef[0].Name != sec.Metadata.Name || sec.StringData[ta.Spec.SecretTargetRef[0].Key] == "" {
		t.Errorf("TriggerAuthentication %+v does not give the token of Secret %q", ta.Spec.SecretTargetRef, sec.Metadata.Name)
	}

	prom := kedaDocs(t, "keda/scaledobject-prometheus.yaml")["ScaledObject"]
	checkScaledObject(t, prom, "prometheus")
	pm := prom.Spec.Triggers[0].Metadata
	for _, f := range []string{"serverAddress", "query", "threshold"} {
		if pm[f] == "" {
			t.Errorf("prometheus trigger lacks %s", f)
		}
	}
	if _, err := strconv.ParseFloat(pm["threshold"], 64); err != nil {
		t.Errorf("threshold %q is not a number", pm["threshold"])
	}
	if !strings.Contains(pm["query"], "fleetd_queue_pending") {
		t.Errorf("query %q does not read fleetd_queue_pending", pm["query"])
	}
	if *prom.Spec.MinReplicaCount < 1 {
		t.Error("the prometheus ScaledObject scales to zero, where no agent exports the metric")
	}
}
