// Shared helpers of the semgan TensorRT plugins (IPluginV3, TensorRT >= 10.0).
//
// The plugins wrap the torch-free kernels of csrc/ through their C ABI (csrc/semgan_kernels.h).
// Attribute parsing follows TensorRT's ONNX parser (FallbackPluginImporter): ONNX STRING
// attributes arrive as PluginFieldType::kCHAR, INT attributes as kINT32 (kINT64 accepted too);
// plugin_namespace / plugin_version attributes may be passed through and are ignored here.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <NvInferRuntime.h>

#include "semgan_kernels.h"

namespace semgan {
namespace trt {

constexpr char const* kPluginNamespace = "semgan";
constexpr char const* kPluginVersion = "1";

// Logger from setLoggerFinder (plugin_registration.cpp); nullptr until TensorRT provides it.
nvinfer1::ILogger* pluginLogger() noexcept;

inline void logError(std::string const& msg) noexcept {
  if (nvinfer1::ILogger* logger = pluginLogger()) {
    logger->log(nvinfer1::ILogger::Severity::kERROR, ("[semgan plugin] " + msg).c_str());
  }
}

// SEMGAN_DTYPE_* for a TensorRT data type, or -1 when unsupported.
inline int kernelDtype(nvinfer1::DataType t) noexcept {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: return SEMGAN_DTYPE_F32;
    case nvinfer1::DataType::kHALF: return SEMGAN_DTYPE_F16;
    case nvinfer1::DataType::kBF16: return SEMGAN_DTYPE_BF16;
    default: return -1;
  }
}

inline bool isFloatType(nvinfer1::DataType t) noexcept { return kernelDtype(t) >= 0; }

// Reads an integer field (kINT32 / kINT64 / kINT8 / kINT16), or returns false.
inline bool fieldInt(nvinfer1::PluginField const& f, int64_t& out) noexcept {
  if (f.data == nullptr || f.length < 1) return false;
  switch (f.type) {
    case nvinfer1::PluginFieldType::kINT32: out = *static_cast<int32_t const*>(f.data); return true;
    case nvinfer1::PluginFieldType::kINT64: out = *static_cast<int64_t const*>(f.data); return true;
    case nvinfer1::PluginFieldType::kINT16: out = *static_cast<int16_t const*>(f.data); return true;
    case nvinfer1::PluginFieldType::kINT8: out = *static_cast<int8_t const*>(f.data); return true;
    default: return false;
  }
}

// Reads a string field (kCHAR, with or without a trailing NUL), or returns false.
inline bool fieldString(nvinfer1::PluginField const& f, std::string& out) noexcept {
  if (f.type != nvinfer1::PluginFieldType::kCHAR || f.data == nullptr || f.length < 0) return false;
  char const* s = static_cast<char const*>(f.data);
  size_t n = static_cast<size_t>(f.length);
  while (n > 0 && s[n - 1] == '\0') --n;
  out.assign(s, n);
  return true;
}

// Owns the storage that a PluginFieldCollection points to (getFieldsToSerialize()).
class FieldWriter {
 public:
  void reset() {
    fields_.clear();
    ints_.clear();
    names_.clear();
    strings_.clear();
    string_names_.clear();
  }
  void addInt(char const* name, int32_t value) {
    ints_.push_back(value);
    names_.push_back(name);
  }
  void addString(char const* name, std::string const& value) {
    strings_.push_back(value);
    string_names_.push_back(name);
  }
  // Builds the collection; the pointers stay valid until the next reset()/add*().
  nvinfer1::PluginFieldCollection const* collection() {
    fields_.clear();
    for (size_t i = 0; i < ints_.size(); ++i) {
      fields_.emplace_back(names_[i], &ints_[i], nvinfer1::PluginFieldType::kINT32, 1);
    }
    for (size_t i = 0; i < strings_.size(); ++i) {
      fields_.emplace_back(string_names_[i], strings_[i].c_str(), nvinfer1::PluginFieldType::kCHAR,
                           static_cast<int32_t>(strings_[i].size() + 1));
    }
    fc_.nbFields = static_cast<int32_t>(fields_.size());
    fc_.fields = fields_.data();
    return &fc_;
  }
 private:
  std::vector<nvinfer1::PluginField> fields_;
  std::vector<int32_t> ints_;
  std::vector<char const*> names_;
  std::vector<std::string> strings_;
  std::vector<char const*> string_names_;
  nvinfer1::PluginFieldCollection fc_{};
};

}  // namespace trt
}  // namespace semgan
