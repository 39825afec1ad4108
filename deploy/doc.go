// Package deploy holds what ships beside the fleetd binary — the systemd
// unit and its environment file, the Kubernetes manifest, KEDA's
// ScaledObjects, the Prometheus alert rules and the Grafana dashboard — and
// the tests that check each file against the fleetd it deploys. It has no
// code: the tests build fleetd from ../cmd/fleetd and ask it, as an operator
// would, rather than reach into package main.
package deploy
