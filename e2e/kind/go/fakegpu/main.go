// fakegpu is a kubelet device plugin for GPUs that are not there. On a kind node it makes
// kubelet itself advertise nvidia.com/gpu in the node's capacity and allocatable, as the NVIDIA
// device plugin does on a real GPU node: the scheduler counts them, each container that asks
// for GPUs is given device IDs (NVIDIA_VISIBLE_DEVICES), and the count survives kubelet
// restarts because the plugin registers again whenever kubelet recreates its socket.
//
// The count is the node's nvidia.com/gpu.count label (GPU feature discovery's), read from the
// --node-labels that kubeadm wrote for kubelet; a number in -count-file (written on the node
// later, e2e/kind/lib.sh kind_fake_gpus) or -count overrides it. A node without either
// advertises nothing. The count is read again every few seconds.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

var (
	resource     = flag.String("resource", "nvidia.com/gpu", "extended resource to advertise")
	count        = flag.Int("count", -1, "devices to advertise (-1: the count file, else the node's count label)")
	countFile    = flag.String("count-file", "/etc/paraserve/fake-gpus", "file that holds the count, if any")
	label        = flag.String("label", "nvidia.com/gpu.count", "node label that holds the count")
	kubeletFlags = flag.String("kubelet-flags", "/var/lib/kubelet/kubeadm-flags.env",
		"kubelet's flags as kubeadm wrote them (where --node-labels is)")
	pluginDir = flag.String("dir", pluginapi.DevicePluginPath, "kubelet's device plugin folder")
)

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	devices []*pluginapi.Device
	stop    chan struct{}
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	select { // the devices never change: hold the stream open until kubelet or we go away
	case <-stream.Context().Done():
	case <-p.stop:
	}
	return nil
}

func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(c.DevicesIds, ",")},
		})
	}
	return resp, nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// wanted is the number of devices to advertise now (0 while kubeadm has not written the flags).
func wanted() int {
	if *count >= 0 {
		return *count
	}
	if data, err := os.ReadFile(*countFile); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
			return n
		}
	}
	data, err := os.ReadFile(*kubeletFlags)
	if err != nil {
		return 0
	}
	re := regexp.MustCompile(regexp.QuoteMeta(*label) + `=(\d+)`)
	if m := re.FindSubmatch(data); m != nil {
		n, _ := strconv.Atoi(string(m[1]))
		return n
	}
	return 0
}

func inode(path string) uint64 {
	info, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// serve runs one plugin for one kubelet socket: it returns when kubelet's socket changes.
func serve(n int) error {
	name := "paraserve-fakegpu.sock"
	socket := filepath.Join(*pluginDir, name)
	kubelet := filepath.Join(*pluginDir, filepath.Base(pluginapi.KubeletSocket))
	_ = os.Remove(socket)
	listener, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	p := &plugin{stop: make(chan struct{})}
	for i := 0; i < n; i++ {
		p.devices = append(p.devices, &pluginapi.Device{ID: fmt.Sprintf("fake-gpu-%d", i), Health: pluginapi.Healthy})
	}
	server := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(server, p)
	go func() { _ = server.Serve(listener) }()
	defer func() { close(p.stop); server.Stop(); _ = os.Remove(socket) }()

	registeredWith := inode(kubelet)
	conn, err := grpc.NewClient("unix://"+kubelet, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version: pluginapi.Version, Endpoint: name, ResourceName: *resource,
	})
	cancel()
	_ = conn.Close()
	if err != nil {
		return fmt.Errorf("register with kubelet: %w", err)
	}
	log.Printf("advertising %d %s to kubelet", n, *resource)
	for {
		time.Sleep(2 * time.Second)
		// kubelet restarted (new socket) or removed ours: register again.
		if inode(kubelet) != registeredWith || inode(socket) == 0 || wanted() != n {
			log.Printf("kubelet's socket or the count changed: registering again")
			return nil
		}
	}
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	kubelet := filepath.Join(*pluginDir, filepath.Base(pluginapi.KubeletSocket))
	for {
		n := wanted()
		if n <= 0 || inode(kubelet) == 0 {
			time.Sleep(2 * time.Second)
			continue
		}
		if err := serve(n); err != nil {
			log.Printf("%v", err)
			time.Sleep(2 * time.Second)
		}
	}
}
