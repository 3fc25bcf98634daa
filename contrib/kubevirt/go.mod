module github.com/hotplug-watchdog/hotplug-watchdog/contrib/kubevirt

go 1.26.8

require (
	k8s.io/api v0.34.3 // indirect
	k8s.io/apimachinery v0.34.3 // indirect
	kubevirt.io/api v1.9.0 // indirect
)
