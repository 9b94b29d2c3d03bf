// Who am I in a multi-process run (SPEC §6, issue 7): rank, world size and local rank of
// this process and where rank 0 listens, read from the environment a launcher left.
// One process per GPU; nothing here touches a GPU or the network.
//
// Sources, first match wins (a variable set to "" counts as unset):
//   1. "env"     RANK, WORLD_SIZE [, LOCAL_RANK] -- torchrun and `rehyat launch` set these.
//                LOCAL_RANK defaults to RANK % LOCAL_WORLD_SIZE, else to RANK (one node).
//   2. "openmpi" OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE [, OMPI_COMM_WORLD_LOCAL_RANK]
//                (mpirun / mpiexec of Open MPI).
//   3. "pmi"     PMI_RANK, PMI_SIZE [, MPI_LOCALRANKID] (MPICH / Intel MPI hydra).
//   4. "slurm"   SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS) [, SLURM_LOCALID]
//                (srun). Note: a batch script itself (not started by srun) also sees
//                SLURM_PROCID=0 and SLURM_NTASKS of the allocation: start rehyat with srun.
//   5. "none"    a single process: rank 0 of 1.
// A missing local-rank variable falls back to the rank (correct on one node).
//
// Rendezvous (train/dist_rendezvous.h) needs rank 0's address unless a shared file is used:
//   MASTER_ADDR wins when set, for every source. Slurm without MASTER_ADDR: the first host
//   of SLURM_STEP_NODELIST, SLURM_JOB_NODELIST or SLURM_NODELIST (task 0 runs there under
//   Slurm's default block distribution), else SLURM_LAUNCH_NODE_IPADDR (the node srun ran
//   on, which is not rank 0's node when srun runs on a login node -- hence second).
//   Open MPI without MASTER_ADDR: 127.0.0.1 when every rank is on this node
//   (OMPI_COMM_WORLD_LOCAL_SIZE equals OMPI_COMM_WORLD_SIZE), so `mpirun -np N rehyat ...`
//   needs nothing more on one machine.
//   MASTER_PORT, default 29500.
//   REHYAT_RENDEZVOUS_FILE=/shared/path: rank 0 publishes its address there instead and
//   MASTER_ADDR becomes optional (it then names the address rank 0 publishes).
//   REHYAT_DIST_TIMEOUT=seconds (default 300): how long rendezvous and collectives may take
//   before this process gives up with an error (train/dist_comm.h).
//
// Errors (rehyat::Error, naming the variable): a non-integer value, rank outside
// [0, world), world < 1, local rank < 0, a port outside 1..65535, a timeout <= 0, a
// world > 1 with neither a master address nor REHYAT_RENDEZVOUS_FILE, a malformed nodelist.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace rehyat::dist {

constexpr int kDefaultMasterPort = 29500;
constexpr double kDefaultTimeoutSeconds = 300;

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr;             // rank 0's host; "" for world 1 or a file rendezvous without it
  int master_port = kDefaultMasterPort;
  std::string source = "none";         // "env", "openmpi", "pmi", "slurm" or "none"
  std::string rendezvous_file;         // REHYAT_RENDEZVOUS_FILE; "" = TCP at master_addr:master_port
  double timeout_seconds = kDefaultTimeoutSeconds;  // REHYAT_DIST_TIMEOUT

  bool distributed() const { return world_size > 1; }
  // "rank 1/4 (local 1) from slurm, rendezvous tcp://node01:29500, timeout 300 s"
  std::string str() const;
};

// Looks a variable up: nullopt when unset. The default reads the process environment.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

DistEnv detect_dist_env();
DistEnv detect_dist_env(const EnvLookup& lookup);

// Expands a Slurm hostlist: "gpu[01-03,07],cpu5" -> gpu01 gpu02 gpu03 gpu07 cpu5. Ranges
// keep the zero padding of their lower bound; several bracket groups in one name expand
// as a product ("r[1-2]n[1-2]" -> r1n1 r1n2 r2n1 r2n2). Throws rehyat::Error naming
// `variable` on unbalanced brackets or a bad range.
std::vector<std::string> expand_slurm_nodelist(const std::string& nodelist,
                                               const std::string& variable = "nodelist");

// Seconds from REHYAT_DIST_TIMEOUT (default kDefaultTimeoutSeconds); throws on a bad value.
double dist_timeout_from_env(const EnvLookup& lookup);

}  // namespace rehyat::dist
