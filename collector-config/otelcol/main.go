// Program otelcol-arthur is the OpenTelemetry Collector that otel-arthur's tests run: the official
// components it needs and nothing else, written as the Collector builder (ocb) writes a
// distribution's main, so that `collector-config/build-collector` needs only `go build`.
package main

import (
	"os"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/otelcol"
)

// release is the one Collector release every component is taken at (contrib and core 0.x; core 1.x
// modules are v1.54.0).
const release = "0.148.0"

func main() {
	settings := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "otelcol-arthur",
			Description: "OpenTelemetry Collector for otel-arthur",
			Version:     release,
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					envprovider.NewFactory(),
					fileprovider.NewFactory(),
					yamlprovider.NewFactory(),
				},
			},
		},
	}
	// cobra has already printed the error.
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		os.Exit(1)
	}
}
