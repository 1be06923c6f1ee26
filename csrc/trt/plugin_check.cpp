// Loader check of libsemgan_trt_plugins.so without TensorRT's libraries or a GPU.
//
// Does what TensorRT does when it loads a plugin library (IPluginRegistry::loadLibrary, trtexec
// --dynamicPlugins): dlopen, setLoggerFinder, getCreators; then exercises every creator and plugin
// method that runs on the host: creator identity and field names, createPlugin from ONNX-parser-like
// PluginFields (strings with and without the trailing NUL, INT32 and INT64 integers, pass-through
// plugin_namespace), capability interfaces, getFieldsToSerialize round trips through createPlugin
// (runtime phase) and clone(), supportsFormatCombination, getOutputDataTypes, configurePlugin and
// onShapeChange (accepting and rejecting), and error reporting through the logger for bad fields.
// Only enqueue() and getOutputShapes() (an IExprBuilder) need TensorRT itself.
//
// Build and run (tests/test_trt_plugin.py does this; CMake: target semgan_trt_plugin_check):
//   g++ -std=c++17 -I<TensorRT include> -I<CUDA include> plugin_check.cpp -ldl -o plugin_check
//   ./plugin_check libsemgan_trt_plugins.so        # exit code 0 when every check passes
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include <NvInferRuntime.h>

namespace {

using nvinfer1::DataType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorFormat;
using nvinfer1::TensorRTPhase;
using FieldMap = std::map<std::string, std::string>;

int g_failures = 0;

void check(bool ok, std::string const& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++g_failures;
}

// Collects the plugins' error messages (they report bad fields / shapes through the logger).
class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity == Severity::kERROR || severity == Severity::kINTERNAL_ERROR) errors.emplace_back(msg);
  }
  bool sawError(char const* needle) const {
    for (auto const& e : errors) {
      if (e.find(needle) != std::string::npos) return true;
    }
    return false;
  }
  std::vector<std::string> errors;
};

class LoggerFinder : public nvinfer1::ILoggerFinder {
 public:
  explicit LoggerFinder(nvinfer1::ILogger* logger) : logger_(logger) {}
  nvinfer1::ILogger* findLogger() override { return logger_; }

 private:
  nvinfer1::ILogger* logger_;
};

std::string fieldValue(PluginField const& f) {
  switch (f.type) {
    case PluginFieldType::kCHAR: {
      std::string s(static_cast<char const*>(f.data), static_cast<size_t>(f.length));
      while (!s.empty() && s.back() == '\0') s.pop_back();
      return s;
    }
    case PluginFieldType::kINT32: return std::to_string(*static_cast<int32_t const*>(f.data));
    case PluginFieldType::kINT64: return std::to_string(*static_cast<int64_t const*>(f.data));
    default: return "<type " + std::to_string(static_cast<int>(f.type)) + ">";
  }
}

FieldMap fieldMap(PluginFieldCollection const* fc) {
  FieldMap out;
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) out[fc->fields[i].name] = fieldValue(fc->fields[i]);
  return out;
}

std::string str(FieldMap const& m) {
  std::string s = "{";
  for (auto const& kv : m) s += kv.first + "=" + kv.second + " ";
  return s + "}";
}

std::vector<std::string> fieldNames(PluginFieldCollection const* fc) {
  std::vector<std::string> names;
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) names.emplace_back(fc->fields[i].name);
  return names;
}

nvinfer1::Dims dims(std::initializer_list<int64_t> values) {
  nvinfer1::Dims d{};
  d.nbDims = static_cast<int32_t>(values.size());
  int32_t i = 0;
  for (int64_t v : values) d.d[i++] = v;
  return d;
}

nvinfer1::DynamicPluginTensorDesc dynDesc(DataType type, nvinfer1::Dims const& d) {
  nvinfer1::DynamicPluginTensorDesc desc{};
  desc.desc.type = type;
  desc.desc.format = TensorFormat::kLINEAR;
  desc.desc.dims = d;
  desc.min = d;
  desc.opt = d;
  desc.max = d;
  return desc;
}

nvinfer1::PluginTensorDesc desc(DataType type, nvinfer1::Dims const& d) {
  nvinfer1::PluginTensorDesc out{};
  out.type = type;
  out.format = TensorFormat::kLINEAR;
  out.dims = d;
  return out;
}

template <typename T>
T* capability(nvinfer1::IPluginV3* plugin, nvinfer1::PluginCapabilityType type, char const* kind) {
  auto* cap = plugin->getCapabilityInterface(type);
  check(cap != nullptr, std::string("capability ") + kind + " present");
  if (cap == nullptr) return nullptr;
  check(std::string(cap->getInterfaceInfo().kind) == kind, std::string("capability kind ") + kind);
  return static_cast<T*>(cap);
}

// Identity, capabilities, serialisation round trips; returns the runtime interface (or nullptr).
nvinfer1::IPluginV3OneRuntime* checkPlugin(nvinfer1::IPluginCreatorV3One* creator, nvinfer1::IPluginV3* plugin,
                                          std::string const& name, FieldMap const& expected) {
  auto* core = capability<nvinfer1::IPluginV3OneCore>(plugin, nvinfer1::PluginCapabilityType::kCORE,
                                                      "PLUGIN_V3ONE_CORE");
  auto* build = capability<nvinfer1::IPluginV3OneBuild>(plugin, nvinfer1::PluginCapabilityType::kBUILD,
                                                        "PLUGIN_V3ONE_BUILD");
  auto* runtime = capability<nvinfer1::IPluginV3OneRuntime>(plugin, nvinfer1::PluginCapabilityType::kRUNTIME,
                                                            "PLUGIN_V3ONE_RUNTIME");
  if (core == nullptr || build == nullptr || runtime == nullptr) return nullptr;
  check(name == core->getPluginName() && std::string(core->getPluginVersion()) == "1" &&
            std::string(core->getPluginNamespace()) == "semgan",
        name + ": plugin name / version / namespace");
  check(build->getNbOutputs() == 1, name + ": one output");
  FieldMap serialized = fieldMap(runtime->getFieldsToSerialize());
  check(serialized == expected, name + ": getFieldsToSerialize " + str(serialized) + " == " + str(expected));
  // Runtime phase: TensorRT passes the serialised fields back to the creator.
  nvinfer1::IPluginV3* restored = creator->createPlugin(name.c_str(), runtime->getFieldsToSerialize(),
                                                        TensorRTPhase::kRUNTIME);
  check(restored != nullptr, name + ": createPlugin(kRUNTIME) from the serialised fields");
  if (restored != nullptr) {
    auto* rt = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        restored->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    check(rt != nullptr && fieldMap(rt->getFieldsToSerialize()) == expected, name + ": round trip keeps the fields");
    delete restored;
  }
  nvinfer1::IPluginV3* copy = plugin->clone();
  check(copy != nullptr, name + ": clone");
  if (copy != nullptr) {
    auto* rt = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        copy->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    check(rt != nullptr && fieldMap(rt->getFieldsToSerialize()) == expected, name + ": clone keeps the fields");
    delete copy;
  }
  return runtime;
}

void checkClassConv(nvinfer1::IPluginCreatorV3One* creator, Logger& logger) {
  check(fieldNames(creator->getFieldNames()) == std::vector<std::string>{"padding_mode", "activation", "has_bias"},
        "ClassConv: getFieldNames");
  // As the ONNX parser passes them: a string with its NUL, one without, an INT64, a pass-through attribute.
  char const zeros[] = "zeros";
  char const tanh_chars[] = {'t', 'a', 'n', 'h'};
  char const ns[] = "semgan";
  int64_t const no_bias = 0;
  PluginField fields[] = {PluginField("padding_mode", zeros, PluginFieldType::kCHAR, 6),
                          PluginField("activation", tanh_chars, PluginFieldType::kCHAR, 4),
                          PluginField("has_bias", &no_bias, PluginFieldType::kINT64, 1),
                          PluginField("plugin_namespace", ns, PluginFieldType::kCHAR, 7)};
  PluginFieldCollection fc{4, fields};
  nvinfer1::IPluginV3* plugin = creator->createPlugin("class_conv", &fc, TensorRTPhase::kBUILD);
  check(plugin != nullptr, "ClassConv: createPlugin(kBUILD) from ONNX-style fields");
  if (plugin == nullptr) return;
  checkPlugin(creator, plugin, "ClassConv", {{"padding_mode", "zeros"}, {"activation", "tanh"}, {"has_bias", "0"}});
  auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(
      plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
  auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
      plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
  // x [B,C,H,W] fp16, labels [B,H,W] int32, weight [K,O,C,3,3] fp16 -> y [B,K,O,H,W] fp16 (no bias)
  nvinfer1::DynamicPluginTensorDesc io[4] = {
      dynDesc(DataType::kHALF, dims({-1, 8, -1, -1})), dynDesc(DataType::kINT32, dims({-1, -1, -1})),
      dynDesc(DataType::kHALF, dims({5, 3, 8, 3, 3})), dynDesc(DataType::kHALF, dims({-1, 5, 3, -1, -1}))};
  bool all = true;
  for (int32_t pos = 0; pos < 4; ++pos) all = all && build->supportsFormatCombination(pos, io, 3, 1);
  check(all, "ClassConv: fp16 linear x / int32 labels / fp16 weight and output supported");
  io[1].desc.type = DataType::kFLOAT;
  check(!build->supportsFormatCombination(1, io, 3, 1), "ClassConv: float labels rejected");
  io[1].desc.type = DataType::kINT32;
  io[2].desc.type = DataType::kFLOAT;
  check(!build->supportsFormatCombination(2, io, 3, 1), "ClassConv: weight type must match x");
  io[2].desc.type = DataType::kHALF;
  io[0].desc.format = TensorFormat::kHWC8;
  check(!build->supportsFormatCombination(0, io, 3, 1), "ClassConv: non-linear formats rejected");
  io[0].desc.format = TensorFormat::kLINEAR;
  DataType in_types[3] = {DataType::kHALF, DataType::kINT32, DataType::kHALF};
  DataType out_type = DataType::kFLOAT;
  check(build->getOutputDataTypes(&out_type, 1, in_types, 3) == 0 && out_type == DataType::kHALF,
        "ClassConv: output type = x's type");
  check(build->configurePlugin(io, 3, io + 3, 1) == 0, "ClassConv: configurePlugin accepts a 3x3 kernel");
  io[2] = dynDesc(DataType::kHALF, dims({5, 3, 8, 4, 4}));
  check(build->configurePlugin(io, 3, io + 3, 1) != 0 && logger.sawError("ClassConv: kernel"),
        "ClassConv: configurePlugin rejects a 4x4 kernel (logged)");
  nvinfer1::PluginTensorDesc in[3] = {desc(DataType::kHALF, dims({2, 8, 16, 16})),
                                      desc(DataType::kINT32, dims({2, 16, 16})),
                                      desc(DataType::kHALF, dims({5, 3, 8, 3, 3}))};
  nvinfer1::PluginTensorDesc out = desc(DataType::kHALF, dims({2, 5, 3, 16, 16}));
  check(runtime->onShapeChange(in, 3, &out, 1) == 0, "ClassConv: onShapeChange accepts concrete shapes");
  delete plugin;

  // Defaults (no fields): reflect padding, which needs H, W > k / 2.
  PluginFieldCollection empty{0, nullptr};
  nvinfer1::IPluginV3* reflect = creator->createPlugin("class_conv", &empty, TensorRTPhase::kBUILD);
  check(reflect != nullptr, "ClassConv: createPlugin with default fields");
  if (reflect != nullptr) {
    FieldMap defaults = fieldMap(static_cast<nvinfer1::IPluginV3OneRuntime*>(
        reflect->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME))->getFieldsToSerialize());
    check(defaults == FieldMap{{"padding_mode", "reflect"}, {"activation", "none"}, {"has_bias", "1"}},
          "ClassConv: defaults " + str(defaults));
    auto* rt = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        reflect->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    nvinfer1::PluginTensorDesc small[4] = {desc(DataType::kFLOAT, dims({1, 8, 3, 16})),
                                           desc(DataType::kINT32, dims({1, 3, 16})),
                                           desc(DataType::kFLOAT, dims({5, 3, 8, 7, 7})),
                                           desc(DataType::kFLOAT, dims({5, 3}))};
    nvinfer1::PluginTensorDesc small_out = desc(DataType::kFLOAT, dims({1, 5, 3, 3, 16}));
    check(rt->onShapeChange(small, 4, &small_out, 1) != 0 && logger.sawError("reflect padding"),
          "ClassConv: onShapeChange rejects H <= k / 2 with reflect padding (logged)");
    delete reflect;
  }

  char const circular[] = "circular";
  PluginField bad_mode[] = {PluginField("padding_mode", circular, PluginFieldType::kCHAR, 9)};
  PluginFieldCollection bad_mode_fc{1, bad_mode};
  check(creator->createPlugin("class_conv", &bad_mode_fc, TensorRTPhase::kBUILD) == nullptr &&
            logger.sawError("padding_mode must be"),
        "ClassConv: padding_mode 'circular' rejected (logged)");
  int32_t const one = 1;
  PluginField bad_type[] = {PluginField("activation", &one, PluginFieldType::kINT32, 1)};
  PluginFieldCollection bad_type_fc{1, bad_type};
  check(creator->createPlugin("class_conv", &bad_type_fc, TensorRTPhase::kBUILD) == nullptr &&
            logger.sawError("bad type for field activation"),
        "ClassConv: integer activation field rejected (logged)");
}

void checkOneHotConv(nvinfer1::IPluginCreatorV3One* creator, Logger& logger) {
  check(fieldNames(creator->getFieldNames()) ==
            std::vector<std::string>{"stride", "padding", "padding_mode", "has_extra", "has_bias"},
        "OneHotConv: getFieldNames");
  int32_t const stride = 2, padding = 1, yes = 1;
  int64_t const has_bias = 1;
  char const reflect[] = "reflect";
  PluginField fields[] = {PluginField("stride", &stride, PluginFieldType::kINT32, 1),
                          PluginField("padding", &padding, PluginFieldType::kINT32, 1),
                          PluginField("padding_mode", reflect, PluginFieldType::kCHAR, 8),
                          PluginField("has_extra", &yes, PluginFieldType::kINT32, 1),
                          PluginField("has_bias", &has_bias, PluginFieldType::kINT64, 1)};
  PluginFieldCollection fc{5, fields};
  nvinfer1::IPluginV3* plugin = creator->createPlugin("onehot_conv", &fc, TensorRTPhase::kBUILD);
  check(plugin != nullptr, "OneHotConv: createPlugin(kBUILD) from ONNX-style fields");
  if (plugin == nullptr) return;
  checkPlugin(creator, plugin, "OneHotConv",
              {{"stride", "2"}, {"padding", "1"}, {"padding_mode", "reflect"}, {"has_extra", "1"}, {"has_bias", "1"}});
  auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(
      plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
  auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
      plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
  // labels [B,H,W] int32, extra [B,1,H,W] fp32, weight [O,K+1,3,3] fp32, bias [O] fp32 -> [B,O,Ho,Wo] fp32
  nvinfer1::DynamicPluginTensorDesc io[5] = {
      dynDesc(DataType::kINT32, dims({-1, -1, -1})), dynDesc(DataType::kFLOAT, dims({-1, 1, -1, -1})),
      dynDesc(DataType::kFLOAT, dims({16, 9, 3, 3})), dynDesc(DataType::kFLOAT, dims({16})),
      dynDesc(DataType::kFLOAT, dims({-1, 16, -1, -1}))};
  io[0].max = dims({4, 64, 128});
  io[1].max = dims({4, 1, 64, 128});
  bool all = true;
  for (int32_t pos = 0; pos < 5; ++pos) all = all && build->supportsFormatCombination(pos, io, 4, 1);
  check(all, "OneHotConv: int32 labels / fp32 extra, weight, bias and output supported");
  io[3].desc.type = DataType::kHALF;
  check(!build->supportsFormatCombination(3, io, 4, 1), "OneHotConv: bias type must match");
  io[3].desc.type = DataType::kFLOAT;
  DataType in_types[4] = {DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT};
  DataType out_type = DataType::kHALF;
  check(build->getOutputDataTypes(&out_type, 1, in_types, 4) == 0 && out_type == DataType::kFLOAT,
        "OneHotConv: output type = weight's type");
  check(build->configurePlugin(io, 4, io + 4, 1) == 0, "OneHotConv: configurePlugin");
  std::printf("info OneHotConv: workspace for labels up to [4,64,128]: %zu bytes\n",
              build->getWorkspaceSize(io, 4, io + 4, 1));
  nvinfer1::PluginTensorDesc in[4] = {desc(DataType::kINT32, dims({2, 16, 16})),
                                      desc(DataType::kFLOAT, dims({2, 1, 16, 16})),
                                      desc(DataType::kFLOAT, dims({16, 9, 3, 3})), desc(DataType::kFLOAT, dims({16}))};
  nvinfer1::PluginTensorDesc out = desc(DataType::kFLOAT, dims({2, 16, 8, 8}));
  check(runtime->onShapeChange(in, 4, &out, 1) == 0, "OneHotConv: onShapeChange accepts concrete shapes");
  in[0].dims = dims({2, 1, 16});
  in[1].dims = dims({2, 1, 1, 16});
  check(runtime->onShapeChange(in, 4, &out, 1) != 0 && logger.sawError("reflect padding needs"),
        "OneHotConv: onShapeChange rejects H <= padding with reflect padding (logged)");
  check(runtime->onShapeChange(in, 3, &out, 1) != 0, "OneHotConv: wrong input count rejected");
  delete plugin;

  int32_t const three = 3;
  PluginField bad_stride[] = {PluginField("stride", &three, PluginFieldType::kINT32, 1)};
  PluginFieldCollection bad_fc{1, bad_stride};
  check(creator->createPlugin("onehot_conv", &bad_fc, TensorRTPhase::kBUILD) == nullptr &&
            logger.sawError("stride 1 or 2"),
        "OneHotConv: stride 3 rejected (logged)");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s libsemgan_trt_plugins.so\n", argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::printf("FAIL dlopen: %s\n", dlerror());
    return 1;
  }
  using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(nvinfer1::ILoggerFinder*);
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
  auto set_logger_finder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
  check(get_creators != nullptr && set_logger_finder != nullptr, "entry points getCreators and setLoggerFinder");
  if (get_creators == nullptr || set_logger_finder == nullptr) return 1;
  Logger logger;
  LoggerFinder finder(&logger);
  set_logger_finder(&finder);
  int32_t count = 0;
  nvinfer1::IPluginCreatorInterface* const* creators = get_creators(count);
  check(creators != nullptr && count == 2, "getCreators returns 2 creators");
  std::map<std::string, nvinfer1::IPluginCreatorV3One*> by_name;
  for (int32_t i = 0; creators != nullptr && i < count; ++i) {
    nvinfer1::InterfaceInfo const info = creators[i]->getInterfaceInfo();
    bool const v3 = std::string(info.kind) == "PLUGIN CREATOR_V3ONE" && info.major == 1;
    check(v3, std::string("creator ") + std::to_string(i) + " is an IPluginCreatorV3One (" + info.kind + ")");
    if (!v3) continue;
    auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
    check(std::string(creator->getPluginVersion()) == "1" && std::string(creator->getPluginNamespace()) == "semgan",
          std::string(creator->getPluginName()) + ": creator version 1, namespace semgan");
    by_name[creator->getPluginName()] = creator;
  }
  check(by_name.count("ClassConv") == 1 && by_name.count("OneHotConv") == 1, "creators ClassConv and OneHotConv");
  if (by_name.count("ClassConv")) checkClassConv(by_name["ClassConv"], logger);
  if (by_name.count("OneHotConv")) checkOneHotConv(by_name["OneHotConv"], logger);
  std::printf("%s: %d failure(s)\n", g_failures == 0 ? "all checks passed" : "FAILED", g_failures);
  return g_failures == 0 ? 0 : 1;
}
