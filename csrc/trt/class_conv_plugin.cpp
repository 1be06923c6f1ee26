// semgan::ClassConv as a TensorRT IPluginV3.
//
// ONNX node (export/onnx_ops.py): ClassConv(x, labels, weight[, bias]) -> y
//   x [B,C,H,W] T, labels [B,H,W] int32, weight [K,O,C,k,k] T, bias [K,O] T (iff has_bias)
//   y [B,K,O,H,W] T,  y[:, i] = act(conv(pad(x * (labels == i)), weight[i]) + bias[i]),  pad = k / 2.
// T: fp32, fp16 or bf16 (all float tensors share it); linear (NCHW) layout only.
// Attributes / plugin fields: padding_mode ("reflect" | "zeros"), activation ("tanh" | "none"), has_bias.
// enqueue() calls semgan_class_conv_forward (csrc/semgan_kernels.h; k in {1, 3, 5, 7}).
#include "class_conv_plugin.h"

#include <exception>

namespace semgan {
namespace trt {

namespace {
constexpr char const* kName = "ClassConv";
enum : int32_t { kX = 0, kLabels = 1, kWeight = 2, kBias = 3 };
}  // namespace

ClassConvPlugin::ClassConvPlugin(bool reflect, bool tanh, bool has_bias)
    : reflect_(reflect), tanh_(tanh), has_bias_(has_bias) {}

nvinfer1::IPluginCapability* ClassConvPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* ClassConvPlugin::clone() noexcept {
  try {
    return new ClassConvPlugin(reflect_, tanh_, has_bias_);
  } catch (std::exception const& e) {
    logError(std::string("ClassConv clone: ") + e.what());
    return nullptr;
  }
}

char const* ClassConvPlugin::getPluginName() const noexcept { return kName; }
char const* ClassConvPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* ClassConvPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t ClassConvPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                         nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  if (nbInputs != numInputs() || nbOutputs != 1) {
    logError("ClassConv: expected " + std::to_string(numInputs()) + " inputs and 1 output");
    return 1;
  }
  if (in[kX].desc.dims.nbDims != 4 || in[kLabels].desc.dims.nbDims != 3 || in[kWeight].desc.dims.nbDims != 5 ||
      (has_bias_ && in[kBias].desc.dims.nbDims != 2)) {
    logError("ClassConv: expected x [B,C,H,W], labels [B,H,W], weight [K,O,C,k,k], bias [K,O]");
    return 1;
  }
  int64_t const kh = in[kWeight].desc.dims.d[3], kw = in[kWeight].desc.dims.d[4];
  if (kh >= 0 && (kh != kw || !semgan_class_conv_supported(kh))) {
    logError("ClassConv: kernel must be square with size in {1, 3, 5, 7}");
    return 1;
  }
  return 0;
}

int32_t ClassConvPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                                            nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs != numInputs()) return 1;
  outputTypes[0] = inputTypes[kX];
  return 0;
}

int32_t ClassConvPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                         nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                         nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                         nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  if (nbInputs != numInputs() || nbOutputs != 1 || inputs[kX].nbDims != 4 || inputs[kWeight].nbDims != 5) return 1;
  outputs[0].nbDims = 5;
  outputs[0].d[0] = inputs[kX].d[0];       // B
  outputs[0].d[1] = inputs[kWeight].d[0];  // K
  outputs[0].d[2] = inputs[kWeight].d[1];  // O
  outputs[0].d[3] = inputs[kX].d[2];       // H
  outputs[0].d[4] = inputs[kX].d[3];       // W
  return 0;
}

bool ClassConvPlugin::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                                int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != numInputs() || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
  if (desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == kLabels) return desc.type == nvinfer1::DataType::kINT32;
  if (pos == kX) return isFloatType(desc.type);
  return desc.type == inOut[kX].desc.type;  // weight, bias and the output share x's type
}

int32_t ClassConvPlugin::getNbOutputs() const noexcept { return 1; }

size_t ClassConvPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const*, int32_t,
                                         nvinfer1::DynamicPluginTensorDesc const*, int32_t) const noexcept {
  return 0;  // the forward kernels need no scratch memory
}

int32_t ClassConvPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                       nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  if (nbInputs != numInputs() || nbOutputs != 1) return 1;
  int64_t const ks = in[kWeight].dims.d[3];
  if (ks != in[kWeight].dims.d[4] || !semgan_class_conv_supported(ks)) {
    logError("ClassConv: unsupported kernel size " + std::to_string(ks));
    return 1;
  }
  if (reflect_ && (ks / 2 >= in[kX].dims.d[2] || ks / 2 >= in[kX].dims.d[3])) {
    logError("ClassConv: reflect padding needs H, W > kernel_size / 2");
    return 1;
  }
  return 0;
}

int32_t ClassConvPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                 nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
                                 void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept {
  int const dtype = kernelDtype(inputDesc[kX].type);
  if (dtype < 0) return 1;
  nvinfer1::Dims const& x = inputDesc[kX].dims;
  nvinfer1::Dims const& w = inputDesc[kWeight].dims;
  int const status = semgan_class_conv_forward(
      dtype, inputs[kX], static_cast<int32_t const*>(inputs[kLabels]), inputs[kWeight],
      has_bias_ ? inputs[kBias] : nullptr, outputs[0], x.d[0], x.d[1], x.d[2], x.d[3], w.d[0], w.d[1], w.d[3],
      reflect_ ? 1 : 0, tanh_ ? 1 : 0, stream);
  if (status != 0) logError("ClassConv: kernel launch failed with CUDA error " + std::to_string(status));
  return status;
}

nvinfer1::IPluginV3* ClassConvPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return clone();
}

nvinfer1::PluginFieldCollection const* ClassConvPlugin::getFieldsToSerialize() noexcept {
  fields_.reset();
  fields_.addString("padding_mode", reflect_ ? "reflect" : "zeros");
  fields_.addString("activation", tanh_ ? "tanh" : "none");
  fields_.addInt("has_bias", has_bias_ ? 1 : 0);
  return fields_.collection();
}

// ------------------------------------------------------------------------------------------------

ClassConvCreator::ClassConvCreator() {
  field_names_.emplace_back("padding_mode", nullptr, nvinfer1::PluginFieldType::kCHAR, 0);
  field_names_.emplace_back("activation", nullptr, nvinfer1::PluginFieldType::kCHAR, 0);
  field_names_.emplace_back("has_bias", nullptr, nvinfer1::PluginFieldType::kINT32, 1);
  fc_.nbFields = static_cast<int32_t>(field_names_.size());
  fc_.fields = field_names_.data();
}

char const* ClassConvCreator::getPluginName() const noexcept { return kName; }
char const* ClassConvCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* ClassConvCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }
nvinfer1::PluginFieldCollection const* ClassConvCreator::getFieldNames() noexcept { return &fc_; }

nvinfer1::IPluginV3* ClassConvCreator::createPlugin(char const* /*name*/, nvinfer1::PluginFieldCollection const* fc,
                                                    nvinfer1::TensorRTPhase /*phase*/) noexcept {
  try {
    std::string padding_mode = "reflect", activation = "none";
    int64_t has_bias = 1;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      nvinfer1::PluginField const& f = fc->fields[i];
      if (f.name == nullptr) continue;
      bool ok = true;
      if (!std::strcmp(f.name, "padding_mode")) ok = fieldString(f, padding_mode);
      else if (!std::strcmp(f.name, "activation")) ok = fieldString(f, activation);
      else if (!std::strcmp(f.name, "has_bias")) ok = fieldInt(f, has_bias);
      if (!ok) {
        logError(std::string("ClassConv: bad type for field ") + f.name);
        return nullptr;
      }
    }
    if (padding_mode != "reflect" && padding_mode != "zeros") {
      logError("ClassConv: padding_mode must be reflect or zeros, got " + padding_mode);
      return nullptr;
    }
    if (activation != "tanh" && activation != "none") {
      logError("ClassConv: activation must be tanh or none, got " + activation);
      return nullptr;
    }
    return new ClassConvPlugin(padding_mode == "reflect", activation == "tanh", has_bias != 0);
  } catch (std::exception const& e) {
    logError(std::string("ClassConv createPlugin: ") + e.what());
    return nullptr;
  }
}

}  // namespace trt
}  // namespace semgan
